"""Modbus: pure register decoding and request planning; the async poller lives beside them."""
