"""What `--help` and `--print_config` show: the config files there are, and every field of
a resolved config with its value and the comment that explains it in the config files."""

import ast
import pathlib
import re

import ml_collections

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


def _field_comments(config_file: pathlib.Path) -> dict[str, str]:
  """Field (dotted path, or bare name for model fields) -> comment, from the config file
  and its siblings (variants import the base config, which documents every field)."""
  siblings = sorted(p for p in config_file.parent.glob("*.py") if p != config_file)
  comments = {}
  for path in [config_file, *siblings]:  # Later files win: the base's comments explain.
    block: list[str] = []
    for line in path.read_text().splitlines():
      if match := _COMMENTED_FIELD.match(line):
        comments[match.group(1)] = match.group(2).strip()
      elif (match := _FIELD.match(line)) and block:
        comments[match.group(1)] = " ".join(block)
      comment = _COMMENT_LINE.match(line)
      block = [*block, comment.group(1)] if comment else []
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
  lines = []
  for name, value in _flatten(config):
    comment = comments.get(name) or comments.get(name.rsplit(".", 1)[-1], "")
    lines.append(f"{name} = {value!r}" + (f"  # {comment}" if comment else ""))
  return "\n".join(lines)
