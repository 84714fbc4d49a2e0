package binkind

import "debug/elf"

const hostMachine = elf.EM_X86_64
