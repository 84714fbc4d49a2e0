package binkind

import "debug/elf"

const hostMachine = elf.EM_AARCH64
