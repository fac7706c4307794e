"""Models: a frozen backbone plus a task head attached after the method's adapters."""
