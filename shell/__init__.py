"""What every long-running role shares, below the roles: ``shell.role`` (start-up error and
checks, signals, supervision, retried chain calls, serving an aiohttp app) and ``shell.net``
(loopback ports). Light on purpose: importing the package imports neither."""
