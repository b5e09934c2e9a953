// Compiles every .py file of a Lambda layer's python/ directory to bytecode for the Lambda runtime's CPython:
//   node compile.mjs LAYER_PYTHON_DIR PYTHON_VERSION
// The compiler is Pyodide, CPython built for WebAssembly, so the build machine's own Python does not matter.
// Exits non-zero when Pyodide is not that CPython version or any file fails to compile (see compile_layer.py).
import { readFile } from "node:fs/promises";
import path from "node:path";

import { loadPyodide } from "pyodide";

const [layerPythonDir, pythonVersion] = process.argv.slice(2);
if (!layerPythonDir || !pythonVersion) {
  console.error("usage: node compile.mjs LAYER_PYTHON_DIR PYTHON_VERSION");
  process.exit(2);
}
// Where Lambda puts a layer's python/: the bytecode records this path as its modules' file names.
const LAMBDA_LAYER_PYTHON_DIR = "/opt/python";

const pyodide = await loadPyodide();
pyodide.FS.mkdirTree(LAMBDA_LAYER_PYTHON_DIR);
pyodide.FS.mount(pyodide.FS.filesystems.NODEFS, { root: path.resolve(layerPythonDir) }, LAMBDA_LAYER_PYTHON_DIR);
const compiler = pyodide.globals.get("dict")();
pyodide.runPython(await readFile(new URL("compile_layer.py", import.meta.url), "utf8"), { globals: compiler });
process.exitCode = compiler.get("main")(LAMBDA_LAYER_PYTHON_DIR, pythonVersion);
