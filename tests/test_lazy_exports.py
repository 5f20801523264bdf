"""Packages re-export names lazily: a name loads its submodule on first use, a light
submodule imports none of its siblings, and a missing name is an ordinary ImportError."""

import json
import subprocess
import sys

import pytest


def test_a_name_comes_from_its_submodule_and_a_submodule_by_its_name():
    import srpo_jax.algo as algo
    from srpo_jax.algo import routing
    from srpo_jax.algo.routing import route

    assert algo.route is route and algo.routing is routing


def test_a_missing_name_is_an_import_error_naming_it():
    with pytest.raises(ImportError, match="cannot import name 'no_such_thing'"):
        from srpo_jax.model import no_such_thing  # noqa: F401


def test_a_config_submodule_imports_no_sibling():
    code = (
        "import sys, srpo_jax.model.config, srpo_jax.algo.config, srpo_jax.sharding.config\n"
        "import json; print(json.dumps([m for m in sys.modules if m.startswith('srpo_jax.')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "srpo_jax.model.qwen3" not in loaded and "srpo_jax.sharding.mesh" not in loaded
    assert "srpo_jax.algo.losses" not in loaded and "srpo_jax.model.config" in loaded
