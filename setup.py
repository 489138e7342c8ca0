"""Map the root folders into the ``turnout`` namespace, sub-packages included.

``kernel/`` installs as ``turnout.kernel``, ``plugins/`` as ``turnout.plugins`` and so on, for
editable installs and wheels alike. Everything else lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

ROOTS = ("kernel", "plugins", "adapters", "bots")

setup(
    packages=[
        f"turnout.{name}"
        for root in ROOTS
        for name in (root, *(f"{root}.{sub}" for sub in find_packages(root)))
    ],
    package_dir={f"turnout.{root}": root for root in ROOTS},
    # Data files inside packages: the learned router's shipped model.
    package_data={"turnout.plugins.learned": ["*.json"]},
)
