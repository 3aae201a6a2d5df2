// gsplat.js (npm `gsplat`, Hugging Face's dylanebert/gsplat.js): its own WebGL 2 renderer and WASM
// sort worker. Its camera is an OpenCV camera (cameras/CameraData.ts: the projection maps camera
// +z forward and flips y, so +y is down in the image; the view matrix is the transpose of the
// camera's rotation, i.e. `rotation` is camera-to-world), and its PLY loader
// (loaders/PLYLoader.ts) takes x, y, z as they are (only format "polycam" swaps axes). So the
// camera is set straight from the JSON's world_to_camera: rotation = its 3x3 transposed, position
// as it is, fx and fy in pixels (scaled to the canvas). No fade-in pass; black background.
import * as SPLAT from "gsplat";
import { fail, loadCamera, query, readyAfter } from "./common.js";

function quaternionFromMatrix(m) {
  // m: row-major 3x3 rotation -> SPLAT.Quaternion (x, y, z, w)
  const [a, b, c, d, e, f, g, h, i] = m;
  const trace = a + e + i;
  let x, y, z, w;
  if (trace > 0) {
    const s = 0.5 / Math.sqrt(trace + 1);
    w = 0.25 / s; x = (h - f) * s; y = (c - g) * s; z = (d - b) * s;
  } else if (a > e && a > i) {
    const s = 2 * Math.sqrt(1 + a - e - i);
    w = (h - f) / s; x = 0.25 * s; y = (b + d) / s; z = (c + g) / s;
  } else if (e > i) {
    const s = 2 * Math.sqrt(1 + e - a - i);
    w = (c - g) / s; x = (b + d) / s; y = 0.25 * s; z = (f + h) / s;
  } else {
    const s = 2 * Math.sqrt(1 + i - a - e);
    w = (d - b) / s; x = (c + g) / s; y = (f + h) / s; z = 0.25 * s;
  }
  return new SPLAT.Quaternion(x, y, z, w);
}

async function main() {
  const { file, camera: cameraUrl, size } = query();
  const cam = await loadCamera(cameraUrl);
  const canvas = document.getElementById("view");
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  const renderer = new SPLAT.WebGLRenderer(canvas, []);
  renderer.backgroundColor = new SPLAT.Color32(0, 0, 0, 255);
  renderer.setSize(size, size);
  const scene = new SPLAT.Scene();
  const w2c = cam.world_to_camera;
  const c2w = [0, 1, 2].flatMap((r) => [0, 1, 2].map((c) => w2c[c][r])); // transpose
  const data = new SPLAT.CameraData();
  data.fx = (cam.fx * size) / cam.width;
  data.fy = (cam.fy * size) / cam.height;
  data.near = 0.01;
  data.far = 100;
  const camera = new SPLAT.Camera(data);
  camera.position = new SPLAT.Vector3(...cam.position);
  camera.rotation = quaternionFromMatrix(c2w);
  if (file.endsWith(".ply")) await SPLAT.PLYLoader.LoadAsync(file, scene);
  else await SPLAT.Loader.LoadAsync(file, scene);
  const render = () => renderer.render(scene, camera);
  // The sort runs in a worker (its WASM) and answers a later frame with the order
  // (renderProgram.depthIndex, empty until then); the camera does not move, so the first order is
  // final: draw until it has arrived, then a few frames more.
  const wait = () => {
    render();
    if (renderer.renderProgram.depthIndex.length === 0) requestAnimationFrame(wait);
    else readyAfter(3, render);
  };
  requestAnimationFrame(wait);
}

main().catch(fail);
