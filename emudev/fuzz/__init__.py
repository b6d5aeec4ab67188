"""A structure-aware fuzzer of the uapi, generated from the YAML spec, with hypothesis.

layout      every ioctl argument and packet, with a role per field, from the spec
strategies  hypothesis strategies drawing requests, valid-looking or broken, per role
packets     command streams for SUBMIT from the ISA's packets, valid and mutated
plan        a request as data (no addresses, no absolute times) so another process can issue it
executor    issues plans here or in a forked helper, with electric-fence pointers
errnos      the oracle: which errnos the kernel could return for a request on a file
session     the clients, the daemon, and every invariant (errnos, hangs, crashes, leaks)
machine     the hypothesis RuleBasedStateMachine tying them together
known       daemon bugs already reported, counted instead of failed
stats       calls and errnos per ioctl, findings; `python -m emudev.fuzz` prints them
"""
