"""MQTT connection settings from configuration, shared by every role that talks to the broker."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from exporters.mqtt import MqttSettings, Will
from telemetryd.config import AgentConfig, AggregatorConfig, TopConfig
from telemetryd.errors import ConfigError
from telemetryd.names import name_problem
from telemetryd.secrets import read_secret, secret_path
from telemetryd.urls import UrlError, parse_broker_url


def mqtt_settings(
    cfg: AgentConfig | AggregatorConfig | TopConfig,
    *,
    client_id: str,
    will: Will | None = None,
    persistent: bool = False,
    session_expiry: int = 0,
    receive_maximum: int = 0,
    max_pending: int = 0,
    env: Mapping[str, str] | None = None,
) -> MqttSettings:
    """Settings for one role; the password is read here, from its file or credential."""
    password_path = secret_path(cfg.password_file, "mqtt-password", env)
    password = None
    if password_path:
        try:
            password = read_secret(password_path)
        except OSError as exc:
            raise ConfigError([f"MQTT password file {password_path}: {exc.strerror}"]) from None
    return MqttSettings(
        broker=parse_broker_url(cfg.broker),
        client_id=cfg.client_id or client_id,
        version=cfg.mqtt_version,
        keepalive=cfg.keepalive,
        password=password,
        ca_file=cfg.tls.ca_file,
        cert_file=cfg.tls.cert_file,
        key_file=cfg.tls.key_file,
        will=will,
        persistent=persistent,
        session_expiry=session_expiry,
        receive_maximum=receive_maximum,
        reconnect_max=cfg.reconnect_max,
        max_pending=max_pending,
    )


def viewer_settings(
    cfg: TopConfig, *, client_id: str, options: Collection[str] = ()
) -> MqttSettings:
    """A viewer's (top, status) settings once its cluster and broker URL are checked.

    ConfigError (exit 2) names the command-line option (when it is in ``options``) or the
    ``[top]`` key, and what was expected: a bad URL or cluster is one line before anything
    starts, not a UI that keeps retrying.
    """

    def where(key: str) -> str:
        return f"option --{key}" if key in options else f"top.{key}"

    check_cluster_filter(cfg.cluster, where("cluster"))
    try:
        return mqtt_settings(cfg, client_id=client_id)
    except UrlError as exc:
        raise ConfigError([f"{where('broker')}: {exc}"]) from None


def check_cluster_filter(cluster: str, where: str = "top.cluster") -> None:
    """``+`` (every cluster) or a valid cluster name; ConfigError (exit 2) naming ``where``."""
    problem = None if cluster == "+" else name_problem(cluster)
    if problem:
        raise ConfigError([f"{where}: cluster {cluster!r} {problem}, or '+' for all"])
