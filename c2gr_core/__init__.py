"""C2GR workbench core library.

Layers, bottom to top (a layer imports only layers below it; tests/test_import_layers.py checks it;
docs/design.md explains each):

    config, losses, metrics                  plain foundations
    diffusion/  prompting/  models/          the generator's maths, task prompts, networks
    training/                                trainer, DDP, replay store, data isolation
    methods/                                 one file per continual method
    experiment/                              the stream runner and the run directory
    analysis/                                replay quality, inspection, downstream, reports
    interface/                               CLI, papermill runner, notebook helpers, plots, widgets
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Where each module of the flat layout (before 0.2) lives now. `import c2gr_core.stream` and
# `from c2gr_core import notebook` keep working and give the very same module object (so a
# monkeypatch or isinstance check on either name sees the same thing); nothing is imported until asked.
MOVED = {
    "access": "training.access", "batch": "interface.batch", "cli": "interface.cli",
    "coupled": "methods.coupled", "distributed": "training.distributed", "downstream": "analysis.downstream",
    "inspection": "analysis.inspection", "notebook": "interface.notebook", "prompts": "prompting.prompts",
    "quality": "analysis.quality", "replay": "training.replay", "report": "analysis.report",
    "rundir": "experiment.rundir", "runs": "experiment.runs", "rups": "prompting.rups",
    "stream": "experiment.runner", "text_encoders": "prompting.text_encoders", "trainer": "training.trainer",
    "viz": "interface.viz", "widgets": "interface.widgets",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.rpartition(".")[2]
        if fullname == f"{__name__}.{old}" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # importlib stamped the alias spec on the real module; give it back its own.
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname):
        # `python -m c2gr_core.cli` (runpy) asks for code to run as __main__. The moved module's own code
        # would run with the alias's package, where its relative imports break, so hand runpy over to it.
        real = f"{__name__}.{MOVED[fullname.rpartition('.')[2]]}"
        return compile(f"import runpy; runpy.run_module({real!r}, run_name='__main__', alter_sys=True)",
                       f"<{fullname}: moved to {real}>", "exec")


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
