// World Labs' Spark (three.js based, its own renderer and sorter): reads .ply, .spz (versions 1-4,
// RUB coordinates taken as they are), .splat, .ksplat, .sog. The file type is given explicitly
// (a .splat has no magic number); black clear. Splats are sorted by view depth
// (sortRadial: false), as the original 3DGS and gshead's rasterizer sort them; Spark's default
// radial sort (distance from the eye) scores lower on the astronaut: 34.1 dB instead of 35.3.
import * as THREE from "three";
import { SparkRenderer, SplatFileType, SplatMesh } from "@sparkjsdev/spark";
import { fail, loadCamera, query, readyAfter, threeCamera } from "./common.js";

const TYPES = { ply: SplatFileType.PLY, splat: SplatFileType.SPLAT, spz: SplatFileType.SPZ };

async function main() {
  const { file, camera: cameraUrl, size } = query();
  const cam = await loadCamera(cameraUrl);
  const canvas = document.getElementById("view");
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(size, size, false);
  renderer.setClearColor(0x000000, 1);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x000000);
  // onDirty: Spark's sort (a worker) has delivered an order and the view needs drawing again.
  let sorted = 0;
  const spark = new SparkRenderer({ renderer, sortRadial: false, onDirty: () => sorted++ });
  scene.add(spark);
  const camera = threeCamera(cam, size);
  const extension = file.split(".").pop().toLowerCase();
  const mesh = new SplatMesh({ url: file, fileType: TYPES[extension] });
  scene.add(mesh);
  await mesh.initialized;
  const render = () => renderer.render(scene, camera);
  // Draw until a sort has arrived and none is pending, then a few frames more.
  const wait = () => {
    render();
    if (sorted < 1 || spark.sorting || spark.sortDirty) requestAnimationFrame(wait);
    else readyAfter(3, render);
  };
  requestAnimationFrame(wait);
}

main().catch(fail);
