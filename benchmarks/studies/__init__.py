"""One package per study, each with the same parts (study, protocol, plan, train, analyse, findings, report)."""
