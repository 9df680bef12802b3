"""The one write path of observed host state: module results read and bounded, observations upserted with
their events, reboots seen. The recorder callback, the controller's runs and the probe all write through here."""
