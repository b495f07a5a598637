"""Ways out of telemetryd: MQTT, stores (InfluxDB, SQLite), Prometheus and on-call hooks.

Each module is one way out behind a small interface, so a store or a channel can be added
without touching the agent or the aggregator.
"""
