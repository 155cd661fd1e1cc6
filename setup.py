"""Package discovery only (metadata lives in pyproject.toml).

`integrations/` is installed as `spt_adapter.integrations` so that it never collides with another
project's top-level `integrations` package; pyproject's static tables cannot express a renamed
package tree that grows, so it is computed here.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["spt_adapter", "spt_adapter.*"])
packages += ["spt_adapter.integrations"] + [
    "spt_adapter.integrations." + name for name in find_packages("integrations")
]
setup(packages=packages, package_dir={"spt_adapter.integrations": "integrations"})
