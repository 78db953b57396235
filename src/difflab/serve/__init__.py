"""``difflab serve``: a web page to sample trained runs (Gradio; ``pip install 'difflab[ui]'``).

    difflab serve runs/digits runs/fashion_ddpm_cond --host 127.0.0.1 --port 7860

:mod:`difflab.serve.backend` checks requests and calls the runs' own ``Model.generate`` (no gradio
needed); :mod:`difflab.serve.app` is the page and the ``/generate`` API endpoint (the only module of
difflab that imports gradio).  The server offers only the runs given at start, binds 127.0.0.1 by
default, caps images, steps and upload sizes, and bounds its queue.
"""

from difflab.serve.backend import Limits, Result, Served, ServeError, check_paths, find_runs, generate, load_runs

__all__ = ["Limits", "Result", "ServeError", "Served", "check_paths", "find_runs", "generate", "load_runs"]
