"""Everything is declared in setup.cfg; this only copies conf/ into the package when a wheel is built, so that
an installed cnnlab carries its configs (cnnlab/conf/) while the repository keeps them at the top level."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads conf/ in place
            self.copy_tree("conf", str(Path(self.build_lib) / "cnnlab" / "conf"))


setup(cmdclass={"build_py": BuildWithConfigs})
