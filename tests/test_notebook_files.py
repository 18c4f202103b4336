"""The stored notebooks open clean in JupyterLab (issue 11, finding 8): JupyterLab writes the
kernel's language_info into a notebook's metadata when the kernel starts, so a notebook that
stores less (or another value) is marked modified at once and asks to be saved on close."""
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_language_info():
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        return kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_stores_what_jupyterlab_would_write(path, kernel_language_info):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)   # cell ids present and valid: JupyterLab would otherwise add them
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    stored = dict(nb.metadata.get("language_info", {}))
    # The patch version follows the machine's Python (environment.yml pins 3.11); a kernel of another
    # patch release rewrites only that field, which is as far as one stored file can go.
    major_minor = lambda info: ".".join(str(info.get("version", "")).split(".")[:2])
    assert major_minor(stored) == major_minor(kernel_language_info), (stored, kernel_language_info)
    stored["version"] = kernel_language_info.get("version")
    assert stored == kernel_language_info, (
        f"{path.name}: metadata.language_info differs from the project kernel's; JupyterLab rewrites it "
        "on open and marks the notebook modified. Copy the kernel's language_info into the file.")
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), (
        f"{path.name}: stored with outputs; clear them")
