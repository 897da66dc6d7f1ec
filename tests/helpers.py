"""Helpers shared by the test modules (importable as ``helpers``: ``pythonpath`` in pyproject.toml)."""


def exact_norms(model):
    """Every norm's eps (any module with a float ``eps``) set to 1e-30: the scale symmetries of
    BatchNorm/LayerNorm become exact, so that their laws hold to round-off."""
    for module in model.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 1e-30
    return model


def read_scalars(log_dir):
    """Every scalar of a run, straight from SQLite (not through RunStore): {name: {step: value}}."""
    import sqlite3

    db = sqlite3.connect(log_dir / "run.sqlite")
    out = {}
    for step, name, value in db.execute("SELECT step, name, value FROM scalars"):
        out.setdefault(name, {})[step] = value
    db.close()
    return out
