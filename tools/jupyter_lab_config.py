"""What `make lab` adds to JupyterLab's settings (loaded with --config; nothing is written to ~/.jupyter).

- One entry per notebook in the file browser: the jupytext twins notebooks/NN_*.py are hidden (saving the
  .ipynb still writes them).
- notebooks/ holds sources, not results: a notebook saved there is saved without outputs (strip on save),
  so running one by hand does not leave megabytes of images in the working tree. The outputs stay on screen
  for the session; a run's executed notebooks, with every output, are in runs/<name>/. The kernel's
  language_info (its Python version) is not kept either: saving an unchanged notebook rewrites it byte for
  byte, and `git status` stays clean.
"""

c = get_config()  # noqa: F821 (defined by Jupyter when it loads this file)

c.ContentsManager.hide_globs = ["__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*~", ".ipynb_checkpoints",
                                "[0-9][0-9]_*.py"]


def save_sources_without_outputs(model, path, contents_manager, **kwargs):
    if model.get("type") != "notebook" or not str(path).lstrip("/").startswith("notebooks/"):
        return
    for cell in model["content"].get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    metadata = model["content"].get("metadata", {})
    metadata.pop("widgets", None)
    if "language_info" in metadata:   # the kernel's version and lexer details: machine facts, not the source's
        metadata["language_info"] = {"name": metadata["language_info"].get("name", "python")}


c.ContentsManager.pre_save_hook = save_sources_without_outputs
