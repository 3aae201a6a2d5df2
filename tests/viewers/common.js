// Shared by the viewer pages: the query string names the splat file and its camera JSON (written
// by `gshead export` beside the file), and the page reports back through window.__ready /
// window.__error, which the Python test polls before taking a screenshot of the canvas.
import * as THREE from "three";

export function query() {
  const q = new URLSearchParams(window.location.search);
  return { file: q.get("file"), camera: q.get("camera"), size: Number(q.get("size") || 256) };
}

export async function loadCamera(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// gshead's camera JSON -> a three.js PerspectiveCamera. The JSON is in the file's own convention
// (OpenCV for .ply/.splat, RUB for .spz): position, target on the optical axis, `up` = the image's
// up direction in world coordinates, vertical field of view in degrees, principal point at the
// image centre. three.js cameras look down their local -z with local +y up; lookAt() with
// camera.up set to the JSON's `up` makes local -z point at the target and local +y the image up,
// so the picture is the one gshead renders (its OpenCV camera: +z forward, +y down) without
// changing the splats' coordinates.
export function threeCamera(cam, size) {
  const camera = new THREE.PerspectiveCamera(cam.fov_y_degrees, 1.0, 0.01, 100.0);
  camera.position.set(...cam.position);
  camera.up.set(...cam.up);
  camera.lookAt(new THREE.Vector3(...cam.target));
  camera.updateMatrixWorld(true);
  camera.updateProjectionMatrix();
  return camera;
}

export function fail(error) {
  window.__error = String((error && error.stack) || error);
  console.error(window.__error);
}

// Signal readiness after `frames` more animation frames (the sort and the upload settle).
export function readyAfter(frames, render) {
  let left = frames;
  const tick = () => {
    render();
    if (--left <= 0) window.__ready = true;
    else requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}
