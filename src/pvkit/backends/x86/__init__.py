"""The x86-64 engine: Unicorn glue, IDT delivery, page walks, hypercall patching."""
