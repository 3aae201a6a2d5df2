// PlayCanvas engine (npm `playcanvas`), the engine SuperSplat is built on (SuperSplat reads files
// into the engine's GSplatData and draws them with its gsplat renderer, the entity turned 180
// degrees about z on load): a `gsplat` asset (framework/parsers/ply.js: positions, rotations and
// scales taken as they are, no axis change) drawn by the GSplat component (unified rendering,
// its default). PlayCanvas is y up
// with cameras looking down their local -z, like three.js, so the camera is placed the same way
// as in common.js: position, then lookAt(target, up) with the JSON's image-up, which makes the
// view gshead's OpenCV camera without moving the splats. Fixed 256x256 canvas, pixel ratio 1,
// no antialiasing, black clear, no tone mapping; gammaCorrection GAMMA_SRGB (the default: the
// file's colours are taken as sRGB display colours, as gshead renders them; GAMMA_NONE would
// darken them, 16 dB). Its kernel differs from 3DGS's: cut at alpha e^-4 and renormalised to
// reach 0 there (frag/gsplat.js normExp), so faint overlapping splats come out darker than in
// gshead (the lowest PSNR of the four viewers; docs/exports.md).
import * as pc from "playcanvas";
import { fail, loadCamera, query, readyAfter } from "./common.js";

async function main() {
  const { file, camera: cameraUrl, size } = query();
  const cam = await loadCamera(cameraUrl);
  const canvas = document.getElementById("view");
  const app = new pc.Application(canvas, {
    graphicsDeviceOptions: { antialias: false, preserveDrawingBuffer: true, deviceTypes: [pc.DEVICETYPE_WEBGL2] },
  });
  app.graphicsDevice.maxPixelRatio = 1;
  app.setCanvasFillMode(pc.FILLMODE_NONE);
  app.setCanvasResolution(pc.RESOLUTION_FIXED, size, size);
  const camera = new pc.Entity("camera");
  camera.addComponent("camera", {
    clearColor: new pc.Color(0, 0, 0, 1),
    fov: cam.fov_y_degrees,
    horizontalFov: false,
    nearClip: 0.01,
    farClip: 100,
    toneMapping: pc.TONEMAP_NONE,
    gammaCorrection: pc.GAMMA_SRGB,
  });
  camera.setPosition(...cam.position);
  camera.lookAt(new pc.Vec3(...cam.target), new pc.Vec3(...cam.up));
  app.root.addChild(camera);
  const asset = new pc.Asset("splat", "gsplat", { url: file });
  await new Promise((resolve, reject) => {
    asset.once("load", resolve);
    asset.once("error", (error) => reject(new Error(`${file}: ${error}`)));
    app.assets.add(asset);
    app.assets.load(asset);
  });
  const splat = new pc.Entity("splat");
  splat.addComponent("gsplat", { asset });
  app.root.addChild(splat);
  // frame:ready (the unified renderer's): `ready` once the splats' world state is current and
  // nothing is loading; gsplat:sorted: the worker has delivered an order.
  let sorted = 0;
  let settled = false;
  app.scene.on("gsplat:sorted", () => sorted++);
  app.systems.gsplat.on("frame:ready", (_camera, _layer, ready, loading) => {
    if (!settled && ready && loading === 0 && sorted > 0) {
      settled = true;
      readyAfter(4, () => {});
    }
  });
  app.start();
}

main().catch(fail);
