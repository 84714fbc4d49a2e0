package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// callCounter counts the system calls and context switches of processes
// (every thread they have when it starts) with perf stat on software
// events, which a VM without hardware counters still has. Unlike CPU time,
// these counts barely move when other work shares the machine, so they
// tell whether a change to the INS saves work per request.
type callCounter struct {
	cmd      *exec.Cmd
	out      bytes.Buffer
	syscalls uint64
	switches uint64
}

const (
	evSyscalls = "raw_syscalls:sys_enter"
	evSwitches = "context-switches"
)

func startCallCounter(pids []int) (*callCounter, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	var ps []string
	for _, p := range pids {
		ps = append(ps, strconv.Itoa(p))
	}
	c := &callCounter{}
	c.cmd = exec.Command(perf, "stat", "-x", ",", "-e", evSyscalls+","+evSwitches, "-p", strings.Join(ps, ","))
	c.cmd.Stderr = &c.out
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf stat: %w", err)
	}
	// perf attaches to the threads before it counts; give it a moment.
	time.Sleep(50 * time.Millisecond)
	return c, nil
}

// stop ends the count and reads it.
func (c *callCounter) stop() error {
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return fmt.Errorf("perf stat: %w", err)
	}
	c.syscalls, c.switches, err = parseCounts(c.out.String())
	return err
}

// parseCounts reads the system call and context switch counts from perf
// stat's CSV output (-x ,: value,unit,event,...).
func parseCounts(out string) (syscalls, switches uint64, err error) {
	found := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		v, perr := strconv.ParseUint(f[0], 10, 64)
		if perr != nil {
			continue
		}
		switch f[2] {
		case evSyscalls:
			syscalls, found = v, found|1
		case evSwitches:
			switches, found = v, found|2
		}
	}
	if found != 3 {
		return 0, 0, fmt.Errorf("perf stat: no counts in %q", tail(out, 300))
	}
	return syscalls, switches, nil
}
