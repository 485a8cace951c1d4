"""Small programs and harnesses the proxy and instrumentation tests run."""
