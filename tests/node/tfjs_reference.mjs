// Reference runner for tests/test_faceres.py: runs a TF.js graph model from a LOCAL
// folder with pure @tensorflow/tfjs on its CPU backend (no tfjs-node binary, no network),
// so the PyTorch port in src/id3pm/tfjs_graph.py can be checked against the real thing.
//
//   node tfjs_reference.mjs --model models/faceres.json --input x.npy \
//        [--input-name input_1] [--shape 2,224,224,3] \
//        --outputs global_pooling/Mean,gender_pred/Sigmoid --out result.json
//
// --input: a little-endian float32 .npy (C order), or a raw float32 file with --shape.
// --out:   JSON {name: {shape: [...], data: [...]}} (float32 values written as JS numbers,
//          which represent them exactly), or, if it ends in .bin, the outputs' raw
//          float32 bytes concatenated in the order of --outputs.
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

function parseArgs(argv) {
  const args = { 'input-name': null, shape: null };
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const key of ['model', 'input', 'outputs', 'out']) if (!args[key]) throw new Error(`missing --${key}`);
  return args;
}

// Minimal .npy reader: version 1/2/3 header, '<f4' only, C order.
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file} is not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(`${file}: only little-endian float32 .npy is supported (${header})`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order is not supported`);
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + buf.length));
  return { shape, data };
}

function readInput(args) {
  if (args.input.endsWith('.npy')) return readNpy(args.input);
  if (!args.shape) throw new Error('a raw float32 input needs --shape');
  const buf = fs.readFileSync(args.input);
  return { shape: args.shape.split(',').map(Number), data: new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length)) };
}

// Load the model.json and its shards with fs, then hand them to tfjs as an in-memory
// IOHandler: tfjs itself decodes the (quantized) weights, exactly as it does in a browser.
async function loadLocalGraphModel(modelJson) {
  const dir = path.dirname(modelJson);
  const json = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const weightSpecs = [];
  const shards = [];
  for (const group of json.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) {
      const file = path.join(dir, p);
      if (!fs.existsSync(file)) throw new Error(`missing weight shard ${file}`);
      shards.push(fs.readFileSync(file));
    }
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.length);
  const handler = tf.io.fromMemory({
    modelTopology: json.modelTopology, weightSpecs, weightData, format: json.format,
    generatedBy: json.generatedBy, convertedBy: json.convertedBy, signature: json.signature,
    userDefinedMetadata: json.userDefinedMetadata,
  });
  return tf.loadGraphModel(handler);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await tf.setBackend('cpu');
  await tf.ready();
  const model = await loadLocalGraphModel(args.model);
  const { shape, data } = readInput(args);
  const inputName = args['input-name'] || model.inputs[0].name;
  const x = tf.tensor(data, shape, 'float32');
  const names = args.outputs.split(',');
  let results = model.execute({ [inputName]: x }, names);
  if (!Array.isArray(results)) results = [results];
  if (args.out.endsWith('.bin')) {
    const parts = results.map((t) => { const a = t.dataSync(); return Buffer.from(a.buffer, a.byteOffset, a.byteLength); });
    fs.writeFileSync(args.out, Buffer.concat(parts));
  } else {
    const out = {};
    names.forEach((name, i) => { out[name] = { shape: results[i].shape, data: Array.from(results[i].dataSync()) }; });
    fs.writeFileSync(args.out, JSON.stringify({ backend: tf.getBackend(), version: tf.version.tfjs, outputs: out }));
  }
}

main().catch((err) => {
  console.error(`tfjs_reference: ${err.message}`);
  process.exit(1);
});
