"""What `--help` and `--print_config` show: the config files there are, and every field of
a resolved config with its value and the comment that explains it in the config files."""

import ast
import pathlib
import re

import ml_collections

from xray_jax import config_args

# `config.a.b = value  # comment`, or a model field `name=value,  # comment`.
_COMMENTED_FIELD = re.compile(r"^\s*(?:config\.)?([A-Za-z_][\w.]*)\s*=(?!=).*?#\s*(.+)$")
# `config.a.b = value` or `name=value,` under a block of comment lines that explains it.
_FIELD = re.compile(r"^\s*(?:config\.)?([A-Za-z_][\w.]*)\s*=(?!=)")
_COMMENT_LINE = re.compile(r"^\s*#\s*(.*)$")


def list_configs(config_dir: pathlib.Path) -> str:
  """One line per config file: its name and the first line of its docstring."""
  lines = []
  for path in sorted(config_dir.glob("*.py")):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines.append(f"  configs/{path.name:22s} {doc.splitlines()[0] if doc else ''}")
  return "\n".join(lines)


# `"family": dict(` opens the fields of one model family in MODEL_FIELDS.
_FAMILY = re.compile(r'^\s*"(\w+)": dict\(')
# `config_args.import_sibling(__file__, "base")`: a variant of another config file.
_BASE = re.compile(r'import_sibling\(__file__, "(\w+)"\)')


def _config_chain(config_file: pathlib.Path) -> list[pathlib.Path]:
  """The config files that `config_file` builds on, base first, then itself."""
  base = _BASE.search(config_file.read_text())
  parent = config_file.with_name(f"{base.group(1)}.py") if base else None
  return [*(_config_chain(parent) if parent and parent.is_file() else []), config_file]


def _field_comments(config_file: pathlib.Path) -> dict[str, str]:
  """Field (dotted path, or FAMILY:NAME for a model family's field) -> comment, from the
  config file and the files it builds on; a variant's own comment wins for what it sets."""
  comments = {}
  for path in _config_chain(config_file):
    block: list[str] = []
    family = ""
    for line in path.read_text().splitlines():
      if match := _FAMILY.match(line):
        family = match.group(1)
      name, comment = None, None
      if match := _COMMENTED_FIELD.match(line):
        name, comment = match.group(1), match.group(2).strip()
      elif (match := _FIELD.match(line)) and block:
        name, comment = match.group(1), " ".join(block)
      if name:
        comments[f"{family}:{name}" if family and "." not in name else name] = comment
      if line.strip() == "),":
        family = ""
      comment_line = _COMMENT_LINE.match(line)
      block = [*block, comment_line.group(1)] if comment_line else []
  return comments


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
  found = []
  for key, value in sorted(config.items()):
    if isinstance(value, ml_collections.ConfigDict):
      found += _flatten(value, f"{prefix}{key}.")
    else:
      found.append((f"{prefix}{key}", value))
  return found


def describe(config: ml_collections.ConfigDict, config_file: pathlib.Path) -> str:
  """`field = value  # comment` for every field of `config`."""
  comments = _field_comments(config_file)
  model = config.get("model", {}).get("name", "")
  family = config_args.model_family(model)
  lines = []
  for name, value in _flatten(config):
    field = name.rsplit(".", 1)[-1]
    comment = (comments.get(name) or comments.get(f"{family}:{field}")
               or comments.get(field, ""))
    lines.append(f"{name} = {value!r}" + (f"  # {comment}" if comment else ""))
  return "\n".join(lines)
