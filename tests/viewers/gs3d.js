// mkkellogg's GaussianSplats3D (three.js based): reads .ply, .splat, .ksplat (and .spz up to
// version 2 only, so not gshead's version-3 .spz). No built-in controls, no SharedArrayBuffer
// (no COOP/COEP headers on the test server), CPU sort, SH degree 0 (gshead writes its higher bands
// as zeros), no antialiasing, black clear.
import * as THREE from "three";
import * as GaussianSplats3D from "@mkkellogg/gaussian-splats-3d";
import { fail, loadCamera, query, readyAfter, threeCamera } from "./common.js";

async function main() {
  const { file, camera: cameraUrl, size } = query();
  const cam = await loadCamera(cameraUrl);
  const canvas = document.getElementById("view");
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(size, size, false);
  renderer.setClearColor(0x000000, 1);
  const camera = threeCamera(cam, size);
  const format = file.endsWith(".splat") ? GaussianSplats3D.SceneFormat.Splat : GaussianSplats3D.SceneFormat.Ply;
  const viewer = new GaussianSplats3D.Viewer({
    renderer,
    camera,
    selfDrivenMode: false,
    useBuiltInControls: false,
    sharedMemoryForWorkers: false,
    gpuAcceleratedSort: false,
    integerBasedSort: false,
    dynamicScene: false,
    antialiased: false,
    sphericalHarmonicsDegree: 0,
    sceneRevealMode: GaussianSplats3D.SceneRevealMode.Instant,
    logLevel: GaussianSplats3D.LogLevel.None,
  });
  await viewer.addSplatScene(file, { format, showLoadingUI: false, progressiveLoad: false, splatAlphaRemovalThreshold: 1 });
  const render = () => {
    viewer.update();
    viewer.render();
  };
  // The sort runs in a worker: draw until the viewer says the splats are ready to render and no
  // sort is running (after at least 10 frames and 500 ms, so the first sort has been asked for and
  // delivered: it takes ~20 ms for 13k splats), then a few frames more.
  let frames = 0;
  const start = performance.now();
  const wait = () => {
    render();
    frames++;
    const early = frames < 10 || performance.now() - start < 500;
    if (early || !viewer.splatRenderReady || viewer.sortRunning) requestAnimationFrame(wait);
    else readyAfter(3, render);
  };
  requestAnimationFrame(wait);
}

main().catch(fail);
