"""Write configuration back out as TOML: the commented sample and the effective settings.

The sample is generated from the schema (descriptions, defaults, ranges), in Telegraf's
convention: ``##`` lines document, a single ``#`` marks a setting shown at its default.
Secrets never appear: only the *paths* of the files that hold them are configuration.
"""

from __future__ import annotations

import datetime
import json
import math
import textwrap
import typing
from typing import Any

from telemetryd.codec import Struct, to_builtins
from telemetryd.config import Config
from telemetryd.configload import env_name, field_types, is_struct, unwrap

_HEADERS = {
    "agent": (
        "telemetryd agent: samples this node's GPUs (NVML) and host, publishes one report per "
        "interval over MQTT. Precedence: command line > environment (TELEMETRYD_AGENT_...) > "
        "this file > defaults. Check a file with: telemetryd config check FILE"
    ),
    "aggregator": (
        "telemetryd aggregator: consumes reports from MQTT, keeps the fleet's live state, "
        "writes to sinks and raises alerts. Precedence: command line > environment "
        "(TELEMETRYD_AGGREGATOR_...) > this file > defaults."
    ),
    "broker": (
        "telemetryd broker: the embedded MQTT broker (amqtt) for one machine or a small site. "
        "Past a few hundred nodes use Mosquitto or EMQX (see examples/mosquitto)."
    ),
    "top": (
        "telemetryd top and telemetryd status: the operator's views of the fleet, read "
        "straight from MQTT. Precedence: command line > environment (TELEMETRYD_TOP_...) > "
        "this file > defaults."
    ),
}


def toml_value(value: Any) -> str:
    """One TOML value (strings, numbers, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return repr(value)
    if isinstance(value, str):
        # JSON escapes what TOML forbids in basic strings, except DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _constraints(meta: Any) -> str:
    """Human text for a field's range, from its msgspec Meta."""
    bits = []
    for item in typing.get_args(meta)[1:]:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                bits.append(f"{sign} {bound}")
    return f" Range: {', '.join(bits)}." if bits else ""


def _description(meta: Any) -> str:
    for item in typing.get_args(meta)[1:]:
        text = getattr(item, "description", None)
        if text:
            return str(text)
    return ""


def _write_table(
    out: list[str], struct: type[Struct], values: dict[str, Any], path: str, sample: bool
) -> None:
    nested: list[tuple[str, type[Struct]]] = []
    for name, tp in field_types(struct).items():
        bare, meta = unwrap(tp)
        if is_struct(bare):
            nested.append((name, bare))
            continue
        value = values.get(name)
        if sample:
            doc = _description(meta) + _constraints(meta)
            if not isinstance(value, dict):
                doc += f" Environment: {env_name(f'{path}.{name}')}."
            out.extend("## " + line for line in textwrap.wrap(doc, 86))
            if isinstance(value, dict):
                out.append(f"# [{path}.{name}.NAME]   (one table per name)")
            else:
                out.append(f"# {_key(name)} = {toml_value(value)}")
            out.append("")
        elif isinstance(value, dict):
            for sub, table in value.items():
                nested_lines = [f"{_key(k)} = {toml_value(v)}" for k, v in table.items()]
                out.extend(["", f"[{path}.{name}.{_key(sub)}]", *nested_lines])
        else:
            out.append(f"{_key(name)} = {toml_value(value)}")
    for name, sub in nested:
        out.append("")
        out.append(f"[{path}.{name}]")
        if sample and sub.__doc__:
            out.extend("## " + line for line in textwrap.wrap(sub.__doc__.strip(), 86))
            out.append("")
        _write_table(out, sub, values.get(name, {}), f"{path}.{name}", sample)


def render(config: Config, sections: tuple[str, ...], *, sample: bool = False) -> str:
    """TOML text of ``sections``; with ``sample``, documented and commented out."""
    data = to_builtins(config)
    types_ = field_types(Config)
    out: list[str] = []
    for section in sections:
        bare, _ = unwrap(types_[section])
        if sample:
            out.extend("## " + line for line in textwrap.wrap(_HEADERS[section], 86))
        out.append(f"[{section}]")
        _write_table(out, bare, data.get(section, {}), section, sample)
        out.append("")
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
