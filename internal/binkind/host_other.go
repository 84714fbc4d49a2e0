//go:build !amd64 && !arm64

package binkind

import "debug/elf"

// hostMachine is unknown here: every ELF program reads as OtherArch.
const hostMachine = elf.EM_NONE
