// gshead's animated-export player: plays a folder written by `gshead export AVATAR --driver SPEC
// -o DIR` (layout: gshead/io/animation.py, docs/exports.md) with World Labs' Spark, a WebGL
// Gaussian-splat renderer on three.js. Bundled with both into one file (dist/player.js) by
// scripts/build_web_player.sh; `gshead view DIR` serves it with the folder under data/.
//
// Two SplatMeshes: the static Gaussians (static.ply) and the dynamic ones (dynamic.ply, frame 0).
// Each frame sets the head pose (the frame's 4x4 matrix) as the transform of both meshes and
// rewrites the dynamic splats' centres and rotations (head space) from frames.bin; Spark sorts
// all splats together. The camera starts at the avatar's source camera (manifest.camera); drag to
// orbit. Query: ?size=PX draws a square PX canvas (the browser test), ?data=URL/ another folder.
//
// window.gsheadPlayer: { ready, error, frames, fps, frame, play(), pause(), seek(i) -> Promise
// resolved once frame i is drawn with a finished sort }.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkRenderer, SplatFileType, SplatMesh } from "@sparkjsdev/spark";

const FORMAT = "gshead-animation";
const VERSION = 1;
const POSE_FLOATS = 16;

const query = new URLSearchParams(window.location.search);
const DATA = query.get("data") || "data/";
const SIZE = query.get("size") ? Number(query.get("size")) : null;
const api = window.gsheadPlayer || (window.gsheadPlayer = { ready: false, error: null });

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

async function fetchFloats(url, count) {
  const bytes = await (await fetchOk(url)).arrayBuffer();
  if (bytes.byteLength !== 4 * count) {
    throw new Error(`${url}: ${bytes.byteLength} bytes, the manifest implies ${4 * count}`);
  }
  const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  if (littleEndian) return new Float32Array(bytes);
  const view = new DataView(bytes); // the files are little-endian; convert on a big-endian host
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

// manifest.camera -> a three.js camera: it looks down its local -z with local +y up, so lookAt()
// with `up` = the image's up direction gives the picture gshead renders from its OpenCV camera
// (principal point at the image centre assumed).
function threeCamera(cam, aspect) {
  const camera = new THREE.PerspectiveCamera(cam.fov_y_degrees, aspect, 0.01, 1000.0);
  camera.position.set(...cam.position);
  camera.up.set(...cam.up);
  camera.lookAt(new THREE.Vector3(...cam.target));
  camera.updateMatrixWorld(true);
  camera.updateProjectionMatrix();
  return camera;
}

function canvasSize(cam) {
  if (SIZE) return [SIZE, SIZE];
  const aspect = cam.width / cam.height;
  const height = Math.max(128, Math.min(window.innerHeight - 48, window.innerWidth / aspect));
  return [Math.round(height * aspect), Math.round(height)];
}

async function main() {
  const manifest = await (await fetchOk(`${DATA}manifest.json`)).json();
  if (manifest.format !== FORMAT || manifest.version !== VERSION) {
    throw new Error(`${DATA}manifest.json: not a ${FORMAT} version ${VERSION} manifest`);
  }
  const frames = manifest.frames;
  const nd = manifest.dynamic.count;
  const record = manifest.frames_file.record_floats;
  const offset = Object.fromEntries(manifest.frames_file.fields.map((f) => [f.name, f.offset_floats]));
  const cam = manifest.camera;

  const canvas = document.getElementById("view");
  const [width, height] = canvasSize(cam);
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(width, height, false);
  renderer.setClearColor(0x000000, 1);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x000000);
  let sorts = 0; // Spark's sort (a worker) delivered an order: the view needs drawing again
  const spark = new SparkRenderer({ renderer, sortRadial: false, onDirty: () => sorts++ });
  scene.add(spark);
  const camera = threeCamera(cam, width / height);
  const controls = new OrbitControls(camera, canvas);
  controls.target.set(...cam.target);
  controls.update();

  const load = (file) => new SplatMesh({ url: `${DATA}${file}`, fileType: SplatFileType.PLY });
  const still = load(manifest.static.file);
  const moving = load(manifest.dynamic.file);
  scene.add(still, moving);
  const [data, scalesData] = await Promise.all([
    fetchFloats(`${DATA}${manifest.frames_file.file}`, frames * record),
    manifest.per_frame.includes("scales")
      ? fetchFloats(`${DATA}${manifest.scales_file.file}`, frames * nd * 3)
      : Promise.resolve(null),
    still.initialized,
    moving.initialized,
  ]);
  const packed = moving.packedSplats;
  if (packed.numSplats !== nd) throw new Error(`dynamic.ply: ${packed.numSplats} splats, manifest ${nd}`);
  // What does not change per frame, as Spark decoded it: sizes, opacities, colours (copied:
  // getSplat returns the same scratch objects on every call).
  const baseScales = new Float32Array(3 * nd);
  const baseColours = new Float32Array(3 * nd);
  const baseOpacities = new Float32Array(nd);
  for (let j = 0; j < nd; j++) {
    const { scales, opacity, color } = packed.getSplat(j);
    baseScales.set([scales.x, scales.y, scales.z], 3 * j);
    baseColours.set([color.r, color.g, color.b], 3 * j);
    baseOpacities[j] = opacity;
  }

  const pose = new THREE.Matrix4();
  const position = new THREE.Vector3();
  const rotation = new THREE.Quaternion();
  const unit = new THREE.Vector3();
  const centre = new THREE.Vector3();
  const quat = new THREE.Quaternion();
  const sizes = new THREE.Vector3();
  const colour = new THREE.Color();
  let shown = -1;

  function setFrame(i) {
    i = ((Math.floor(i) % frames) + frames) % frames;
    const r = i * record;
    pose.set(...data.subarray(r + offset.pose, r + offset.pose + POSE_FLOATS)); // row-major
    pose.decompose(position, rotation, unit);
    for (const mesh of [still, moving]) {
      mesh.position.copy(position);
      mesh.quaternion.copy(rotation);
    }
    const m = r + offset.means;
    const q = r + offset.quats;
    for (let j = 0; j < nd; j++) {
      centre.set(data[m + 3 * j], data[m + 3 * j + 1], data[m + 3 * j + 2]);
      // stored (w, x, y, z); three.js takes (x, y, z, w)
      quat.set(data[q + 4 * j + 1], data[q + 4 * j + 2], data[q + 4 * j + 3], data[q + 4 * j]);
      if (scalesData) {
        const k = (i * nd + j) * 3;
        sizes.set(scalesData[k], scalesData[k + 1], scalesData[k + 2]);
      } else {
        sizes.set(baseScales[3 * j], baseScales[3 * j + 1], baseScales[3 * j + 2]);
      }
      colour.setRGB(baseColours[3 * j], baseColours[3 * j + 1], baseColours[3 * j + 2]);
      packed.setSplat(j, centre, sizes, quat, baseOpacities[j], colour);
    }
    packed.needsUpdate = true;
    moving.updateVersion();
    shown = i;
    api.frame = i;
    scrub.value = String(i);
  }

  // ------------------------------------------------------------------------------------ the loop
  const button = document.getElementById("play");
  const scrub = document.getElementById("scrub");
  const status = document.getElementById("status");
  scrub.max = String(frames - 1);
  let playing = false;
  let clockStart = 0; // ms at which frame 0 would have been shown
  const stamps = []; // times of the last frame changes, for frames/s
  let waiting = null; // { sorts, after, resolve }: a seek waiting for its sort

  function play() {
    if (playing) return;
    playing = true;
    clockStart = performance.now() - (Math.max(shown, 0) / manifest.fps) * 1000;
    button.textContent = "Pause";
  }
  function pause() {
    playing = false;
    button.textContent = "Play";
  }
  function seek(i) {
    pause();
    setFrame(i);
    return new Promise((resolve) => {
      waiting = { sorts, after: 3, resolve };
    });
  }
  button.addEventListener("click", () => (playing ? pause() : play()));
  scrub.addEventListener("input", () => seek(Number(scrub.value)));
  window.addEventListener("keydown", (e) => {
    if (e.code === "Space") (playing ? pause : play)();
  });

  function loop(now) {
    if (playing) {
      const i = Math.floor(((now - clockStart) / 1000) * manifest.fps) % frames;
      if (i !== shown) {
        setFrame(i);
        stamps.push(now);
      }
    }
    while (stamps.length && now - stamps[0] > 1000) stamps.shift();
    controls.update();
    // While a seek's sort runs, draw nothing: in software WebGL the frames queued meanwhile delay
    // the sort's depth readback (measured 3.6 s instead of 1.9 s a seek under SwiftShader).
    if (!(waiting && spark.sorting)) renderer.render(scene, camera);
    if (waiting && sorts > waiting.sorts && !spark.sorting && !spark.sortDirty && --waiting.after <= 0) {
      const done = waiting.resolve;
      waiting = null;
      done(shown);
    }
    const rate = playing ? `${stamps.length} frames/s (of ${manifest.fps})` : `paused, ${manifest.fps} frames/s`;
    status.textContent = `frame ${shown + 1} / ${frames} \u00b7 ${rate}`;
    requestAnimationFrame(loop);
  }

  Object.assign(api, { frames, fps: manifest.fps, manifest, play, pause, seek, frame: 0 });
  requestAnimationFrame(loop);
  await seek(0);
  api.ready = true;
  if (!SIZE && query.get("autoplay") !== "0") play();
}

main().catch((error) => {
  api.error = String((error && error.stack) || error);
  const box = document.getElementById("error");
  if (box) box.textContent = api.error;
  console.error(api.error);
});
