"""
Regenerate the Python modules for res/proto/**/*.proto into ion/core/object/gpb.

    python tools/make_protos.py [OUTPUT_DIR]

protoc (from grpcio-tools) writes modules that import each other by proto path
(`from net.ooici.core.type import type_pb2`). This script moves them under the
`ion.core.object.gpb` package: it rewrites those imports and the module names,
adds the package `__init__.py` files, and lists every module in
`gpb/__init__.py` so that the type registry can import them all.

It also removes protoc's runtime version gate. That gate would require a protobuf
runtime at least as new as this protoc, but setup.py supports protobuf 5.27 to 7.x,
and these plain proto2 descriptors load on all of them.
"""

import os
import re
import sys

from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "res", "proto")
PACKAGE = "ion.core.object.gpb"
DEFAULT_OUT = os.path.join(ROOT, *PACKAGE.split("."))

_VERSION_GATE = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n"
)
_PROTO_IMPORT = re.compile(r"^from (net(?:\.\w+)*) import", re.MULTILINE)
_MODULE_NAME = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(net[\w.]*)'")


def proto_files():
    """Every .proto under res/proto, relative to it, in a stable order."""
    found = []
    for folder, _dirs, files in os.walk(PROTO_DIR):
        found += [os.path.relpath(os.path.join(folder, f), PROTO_DIR) for f in files if f.endswith(".proto")]
    return sorted(found)


def run_protoc(out_dir, protos):
    args = ["protoc", "-I" + PROTO_DIR, "--python_out=" + out_dir] + protos
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def adapt(source):
    """Module text that imports its siblings from inside our package."""
    source = _VERSION_GATE.sub("", source)
    source = _PROTO_IMPORT.sub(r"from %s.\1 import" % PACKAGE, source)
    return _MODULE_NAME.sub(r"\1%s.\2'" % PACKAGE, source)


def module_names(protos):
    return [PACKAGE + "." + p[: -len(".proto")].replace(os.sep, ".") + "_pb2" for p in protos]


def write_packages(out_dir, modules):
    """__init__.py in every generated folder; the top one names all modules."""
    for folder, _dirs, _files in os.walk(out_dir):
        init = os.path.join(folder, "__init__.py")
        if folder != out_dir and not os.path.exists(init):
            open(init, "w").close()
    with open(os.path.join(out_dir, "__init__.py"), "w") as f:
        f.write('"""Generated from res/proto by `python tools/make_protos.py`; do not edit."""\n\n')
        f.write("MODULES = (\n%s)\n" % "".join('    "%s",\n' % m for m in modules))


def generate(out_dir=DEFAULT_OUT):
    protos = proto_files()
    os.makedirs(out_dir, exist_ok=True)
    run_protoc(out_dir, protos)
    for proto in protos:
        path = os.path.join(out_dir, proto[: -len(".proto")] + "_pb2.py")
        with open(path) as f:
            source = adapt(f.read())
        with open(path, "w") as f:
            f.write(source)
    write_packages(out_dir, module_names(protos))


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
