"""The Gradio page of ``difflab serve`` (the only module of difflab that imports gradio).

The form is built from the served models' ``options`` (:attr:`difflab.train.models.Model.options`):
a widget per option any served run takes, shown for the runs that take it -- solver (every
registered name), steps, time grid, class label, prompt, guidance, and whatever later kinds of model
add (an image and a mask to edit, a strength, a refiner chosen among the served runs, numbers and
words for the rest).  Generate calls :func:`difflab.serve.backend.generate`, i.e. the run's own
``Model.generate``; the same function is the ``/generate`` API endpoint, so ``gradio_client`` gets
what the page gets.

Concurrency: Gradio's queue holds at most ``Limits.queue`` waiting requests and runs
``Limits.concurrency`` at once; a request beyond that is answered at once with Gradio's
"Queue is full" error (in the page, and as the API's error).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline server

import gradio as gr

from difflab import solvers, timesteps
from difflab.serve import backend
from difflab.serve.backend import Limits, Served, ServeError

__all__ = ["build_app", "launch"]

FIRST = ("solver", "steps", "grid", "label", "prompt", "guidance")


def _option_names(runs: dict[str, Served]) -> list[str]:
    names = {o for s in runs.values() for o in s.options}
    return [o for o in FIRST if o in names] + sorted(names - set(FIRST))


def _help(runs: dict[str, Served], name: str) -> str:
    return next((s.options[name] for s in runs.values() if name in s.options), "")


def _widget(name: str, runs: dict[str, Served], first: Served, limits: Limits) -> gr.components.Component:
    w = _make_widget(name, runs, first, limits)
    w.elem_id = f"opt-{name}"  # stable handles for browsers and tests
    return w


def _make_widget(name: str, runs: dict[str, Served], first: Served, limits: Limits) -> gr.components.Component:
    info, visible = _help(runs, name), name in first.options
    d = first.defaults()
    if name == "solver":
        return gr.Dropdown(
            solvers.names(), value=d["solver"], label="solver", info=info, visible=visible, allow_custom_value=True
        )
    if name == "steps":
        return gr.Number(d["steps"], label=f"steps (1..{limits.max_steps})", info=info, visible=visible)
    if name == "grid":
        return gr.Dropdown(
            ["default", *timesteps.names()], value="default", label="time grid", info=info, visible=visible
        )
    if name == "label":
        ch = first.label_choices()
        return gr.Dropdown(ch, value=ch[0], label="label", info=info, visible=visible, allow_custom_value=True)
    if name == "prompt":
        return gr.Textbox("", label="prompt", info=info, visible=visible)
    if name == "guidance":
        return gr.Number(0.0, label=name, info=info, visible=visible)
    if name in backend.FLOAT_OPTIONS or name in backend.INT_OPTIONS:
        # a text field: empty means the model's default (an empty number field would send 0)
        return gr.Textbox("", label=name, info=info, visible=visible)
    if name in backend.IMAGE_OPTIONS or name in backend.MASK_OPTIONS:
        mode = "L" if name in backend.MASK_OPTIONS else "RGB"
        return gr.Image(None, label=name, type="numpy", image_mode=mode, sources=["upload"], visible=visible)
    if name in backend.RUN_OPTIONS:
        return gr.Dropdown(
            ["none", *runs], value="none", label=name, info=info, visible=visible, allow_custom_value=True
        )
    return gr.Textbox("", label=name, info=info, visible=visible)


def build_app(runs: dict[str, Served], limits: Limits | None = None) -> gr.Blocks:
    """The page (a ``gr.Blocks``, queued with the limits' bounds) for the served ``runs``."""
    limits = limits or Limits()
    if not runs:
        raise ServeError("no runs to serve")
    first = next(iter(runs.values()))
    names = _option_names(runs)
    with gr.Blocks(title="difflab") as app:
        gr.Markdown(
            "## difflab\nSample the runs this server was started with. Every registered solver; images are seeded per "
            f"sample (the same seed gives the same images whatever their number). At most {limits.max_n} images and "
            f"{limits.max_steps} steps per request."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # custom values are allowed so that the backend, not the widget, answers a bad value by name
                run = gr.Dropdown(list(runs), value=first.name, label="run", allow_custom_value=True, elem_id="run")
                widgets = {name: _widget(name, runs, first, limits) for name in names}
                seed = gr.Textbox("0", label="seed", info="an integer >= 0", elem_id="seed")
                n = gr.Number(min(16, limits.max_n), label=f"number of images (1..{limits.max_n})", elem_id="n")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                grid = gr.Image(label="samples", type="pil", format="png", interactive=False, elem_id="grid")
                strip = gr.Image(
                    label="denoising: noise to sample, one row per image",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="strip",
                )
                info = gr.Markdown("", elem_id="info")
                with gr.Accordion("solver", open=False):
                    solver_json = gr.JSON(backend.solver_info(first.defaults()["solver"] or "ddim"))
                with gr.Accordion("run", open=False):
                    run_json = gr.JSON(first.describe())
        order = list(widgets)

        def on_generate(run_name: str, seed_text: Any, n_images: Any, *values: Any, progress=gr.Progress()) -> tuple:  # noqa: B008 -- Gradio injects the bar here
            try:
                res = backend.generate(
                    runs,
                    limits,
                    run_name,
                    n_images,
                    seed_text,
                    dict(zip(order, values)),
                    progress=lambda f: progress(f, desc="sampling"),
                )
            except ServeError as e:
                raise gr.Error(str(e), print_exception=False) from None
            print(f"difflab serve: {run_name}: {res.summary()}", flush=True)
            return res.grid, res.strip, f"**{res.summary()}**"

        # name the API's parameters after the form's fields, each optional (None: the run's default), so that
        # gradio_client calls read predict(run, seed, n, solver=..., steps=..., api_name="/generate")
        P = inspect.Parameter
        on_generate.__signature__ = inspect.Signature(
            [P(name, P.POSITIONAL_OR_KEYWORD, default=None) for name in ("run", "seed", "n", *order)]
            + [P("progress", P.KEYWORD_ONLY, default=gr.Progress())]
        )
        button.click(
            on_generate,
            inputs=[run, seed, n, *widgets.values()],
            outputs=[grid, strip, info],
            api_name="generate",
        )

        def on_run(run_name: str) -> list:
            s = runs.get(run_name)
            if s is None:  # a value no dropdown offers: only an API client can send it
                raise gr.Error(f"run {run_name!r} is not served here; served runs: {', '.join(runs)}")
            ups = []
            for name in order:
                kw: dict[str, Any] = {"visible": name in s.options}
                if name == "label":
                    ch = s.label_choices()
                    kw.update(choices=ch, value=ch[0])
                elif name in ("solver", "steps") and s.defaults()[name] is not None:
                    kw["value"] = s.defaults()[name]
                ups.append(gr.update(**kw))
            return [*ups, s.describe()]

        run.change(on_run, inputs=[run], outputs=[*widgets.values(), run_json], api_name="run_info")
        if "solver" in widgets:
            widgets["solver"].change(
                backend.solver_info, inputs=[widgets["solver"]], outputs=[solver_json], api_name="solver_info"
            )
    app.queue(max_size=limits.queue, default_concurrency_limit=limits.concurrency)
    return app


def launch(
    runs: dict[str, Served],
    limits: Limits | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    quiet: bool = False,
) -> gr.Blocks:
    """Build the page and serve it on ``host:port`` (blocking unless ``block=False``)."""
    limits = limits or Limits()
    app = build_app(runs, limits)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=True,
        max_file_size=int(limits.max_upload_mb * 1024 * 1024),
        ssr_mode=False,
        footer_links=["api"],
    )
    return app
