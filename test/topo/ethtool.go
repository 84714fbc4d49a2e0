package topo

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with the ifr_data member.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

// disableOffloads turns off transmit checksum offload, scatter-gather, TSO
// and GSO on ifname in the calling thread's namespace, so that frames leave
// it in wire format: complete checksums and at most one MTU each. A
// user-space stack reading the far end with a plain packet socket then sees
// what it would see on a real link.
func disableOffloads(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	for _, cmd := range []uint32{unix.ETHTOOL_STSO, unix.ETHTOOL_SGSO, unix.ETHTOOL_SSG, unix.ETHTOOL_STXCSUM} {
		v := &ethtoolValue{cmd: cmd}
		ifr := &ifreqData{data: uintptr(unsafe.Pointer(v))}
		copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
		runtime.KeepAlive(v)
		if errno != 0 {
			return fmt.Errorf("ethtool cmd %#x on %s: %w", cmd, ifname, errno)
		}
	}
	return nil
}
