// Package unixfd turns the SCM_RIGHTS control messages received on a unix
// socket into files.
package unixfd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Rights returns the descriptors carried by the SCM_RIGHTS messages in oob,
// as files named name. A malformed control block yields an error, and every
// descriptor already taken from it is closed, so none leaks.
func Rights(oob []byte, name string) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			Close(files)
			return nil, fmt.Errorf("control message: %w", err)
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), name))
		}
	}
	return files, nil
}

// Close closes every file.
func Close(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
