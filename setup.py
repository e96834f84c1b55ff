"""Build: the hot path (duck_prefork/build.py: COMPILED) is compiled with mypyc when a C compiler
and the Python headers are there; without them, or with DUCK_PREFORK_NO_EXTENSIONS=1, the
package installs as pure Python and runs the same sources. Everything else is in
pyproject.toml."""

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
build = runpy.run_path(os.path.join(HERE, "duck_prefork", "build.py"))


def say(message):
    print(f"duck-prefork setup: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Build the compiled modules, or none of them (they are all or nothing: build.py): a
    failed build leaves the pure-Python package, with a warning, instead of failing the
    install. On success, the digests of the sources they came from are written next to them
    (build.py compares them at import)."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, a compile error
            say(f"WARNING: the compiled modules could not be built ({exc}); installing the "
                "pure-Python build, which serves the same but slower")
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            return
        stamp = "".join(f"{module} {build['source_digest'](module)}\n"
                        for module in build["COMPILED"])
        targets = [os.path.join(self.build_lib, "duck_prefork")]
        if self.inplace:
            targets.append(os.path.join(HERE, "duck_prefork"))
        for target in targets:
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, build["STAMP"]), "w", encoding="ascii") as file:
                file.write(stamp)

    def get_outputs(self):
        outputs = super().get_outputs()
        if self.extensions:
            outputs.append(os.path.join(self.build_lib, "duck_prefork", build["STAMP"]))
        return outputs


def compiled_modules():
    if os.environ.get(build["PURE_ENV"], "") not in ("", "0"):
        say(f"{build['PURE_ENV']} is set: installing the pure-Python build")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("WARNING: mypyc is not available; installing the pure-Python build")
        return []
    paths = [os.path.join("duck_prefork", *module.split(".")[1:]) + ".py"
             for module in build["COMPILED"]]
    try:
        return mypycify(paths, opt_level="3", group_name="duck_prefork_compiled")
    except BaseException as exc:  # mypyc reports type errors by exiting
        say(f"WARNING: mypyc could not compile the hot path ({exc!r}); installing the "
            "pure-Python build")
        return []


setup(ext_modules=compiled_modules(), cmdclass={"build_ext": OptionalBuildExt})
