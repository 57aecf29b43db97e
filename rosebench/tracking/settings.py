"""The `tracking` config node as a dataclass, free of MLflow imports: a run with tracking off stays light.

A password in the tracking URI (``http://user:pass@host``) is used to connect and never written, printed
or logged: ``redact_uri`` gives what appears instead."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class TrackingSettings:
    enabled: bool = True
    uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch folder
    experiment: str = "rosebench"
    system_metrics: bool = False  # CPU/memory (and GPU via pynvml) every second
    artifacts: bool = True  # results.json, outputs.jsonl, .hydra/, profile/


def uri_password(uri: str | None) -> str | None:
    """The password in a URI's user info (``http://user:pass@host``), as written in the URI."""
    return urlsplit(uri).password if uri else None


def redact_uri(uri: str | None) -> str | None:
    """``http://user:***@host:port/...``: what rosebench writes, prints or logs instead of the URI."""
    password = uri_password(uri)
    return redact(uri, password) if uri and password else uri


def redact(text: str, password: str | None) -> str:
    """``text`` with every occurrence of ``password`` replaced by ``***``."""
    return text.replace(password, "***") if password else text


_REDACTED_IN_LOGS: set[str] = set()


def redact_logs(password: str | None) -> None:
    """Take ``password`` out of every log record made in this process from now on (Hydra echoes each sweep
    job's overrides, the tracking URI included, to the console and to log files). A record factory, not
    a handler filter: Hydra's launchers reconfigure logging, and replace the handlers, after this runs."""
    if not password or password in _REDACTED_IN_LOGS:
        return
    if not _REDACTED_IN_LOGS:  # one factory per process, however many runs a pooled worker does
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            message = record.getMessage()
            if any(secret in message for secret in _REDACTED_IN_LOGS):
                for secret in _REDACTED_IN_LOGS:
                    message = redact(message, secret)
                record.msg, record.args = message, None
            return record

        logging.setLogRecordFactory(redacting_factory)
    _REDACTED_IN_LOGS.add(password)
