"""The HTML pages' one jinja2 environment: the templates in trainer/evaluation/templates/, autoescaping on.

    python -m trainer.report --job_dir JOB   # renders templates/report.html through it

Autoescaping is on because head, class, file names and example ids come from the user's schema and CSV. The
templates are loaded through the package (jinja2.PackageLoader, shipped as package_data in setup.py), so an
installed copy finds them as the checkout does; StrictUndefined makes a name the page forgets to pass an error,
not an empty cell.
"""

from __future__ import annotations

import jinja2


def num(v) -> str:
    """A table cell: floats to 3 decimals, nothing for None (the template escapes the rest)."""
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("trainer.evaluation", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["num"] = num


def render(template: str, **context) -> str:
    """The page `template` (a file name in templates/) rendered with `context`."""
    return _ENV.get_template(template).render(context)
