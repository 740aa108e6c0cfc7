"""``inwall demo``: the whole product on one machine, in about ten seconds."""
