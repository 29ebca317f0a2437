"""Schema-qualified names: the ``QualifiedName`` value and the parser of ``schema.table`` keys.

A leaf module (no project imports), so the config and every engine module can use it without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The source schema that holds the migration's DDL capture (``incremental.ddl: replicate``): never migrated.
CAPTURE_SCHEMA = "pgmigrate_ddl"


@dataclass(frozen=True, order=True)
class QualifiedName:
    """A schema-qualified name, exact as in the catalog (no case folding)."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{_show(self.schema)}.{_show(self.name)}"

    @property
    def key(self) -> str:
        """The unquoted ``schema.name`` form used by selection patterns."""
        return f"{self.schema}.{self.name}"


def _show(part: str) -> str:
    if "." in part or '"' in part or part != part.strip() or not part:
        return '"' + part.replace('"', '""') + '"'
    return part


def parse_qualified_name(text: str) -> QualifiedName:
    """Parse ``schema.table``; a part holding a dot or a quote is written in double quotes (``""`` for a quote).

    Names are taken exactly as written: ``public.Orders`` names the table ``Orders``.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise ValueError(f"{text!r} has an unterminated quote")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            j = text.find(".", i)
            j = n if j < 0 else j
            part = text[i:j]
            if '"' in part:
                raise ValueError(f"{text!r} has a quote inside an unquoted name")
            parts.append(part)
            i = j
        if i >= n:
            break
        if text[i] != ".":
            raise ValueError(f"{text!r}: expected a dot after a quoted name")
        i += 1
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a schema-qualified table name (schema.table)")
    if not all(parts):
        raise ValueError(f"{text!r} has an empty schema or table name")
    return QualifiedName(parts[0], parts[1])


__all__ = ["CAPTURE_SCHEMA", "QualifiedName", "parse_qualified_name"]
