package topo

import (
	"github.com/mpshim/mpshim/internal/procstat"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StateDir holds one JSON state file per live topology, naming its owner
// process and its namespaces, so that Reap can remove what a dead owner left.
const StateDir = "/run/mpshim-test"

// state is the content of a state file.
type state struct {
	ID string `json:"id"`
	// PID and Start (starttime from /proc/PID/stat) identify the owner;
	// the pair survives PID reuse.
	PID        int      `json:"pid"`
	Start      uint64   `json:"start"`
	Namespaces []string `json:"namespaces"`
}

func statePath(id string) string { return filepath.Join(StateDir, id+".json") }

func writeState(s *state) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := statePath(s.ID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, statePath(s.ID)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// procStart returns the start time (clock ticks since boot) of pid.
func procStart(pid int) (uint64, error) {
	st, err := procstat.Read(pid)
	return st.StartTime, err
}

// ownerAlive reports whether the owner recorded in s still runs.
func ownerAlive(s *state) bool {
	return procstat.Alive(s.PID, s.Start)
}

// Reap removes the leftovers of earlier runs whose owning process is dead:
// it kills every process still inside their namespaces, deletes the
// namespaces (which destroys their links) and the state files. Topologies of
// live processes are left alone, so Reap is safe while other tests run.
func Reap() error {
	ents, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reap: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(StateDir, name)
		if strings.HasSuffix(name, ".json.tmp") {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
				os.Remove(path)
			}
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed concurrently
		}
		var s state
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reap %s: %w", path, err))
			continue
		}
		if ownerAlive(&s) {
			continue
		}
		slog.Info("topo: reaping leftover topology", "id", s.ID, "owner", s.PID)
		if err := removeNamespaces(s.Namespaces); err != nil {
			errs = append(errs, fmt.Errorf("reap %s: %w", s.ID, err))
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("reap %s: %w", s.ID, err))
		}
	}
	return errors.Join(errs...)
}

// removeNamespaces kills all processes inside the named namespaces, then
// deletes the namespaces in reverse order. Missing namespaces are fine.
func removeNamespaces(names []string) error {
	killInNamespaces(names)
	var errs []error
	for i := len(names) - 1; i >= 0; i-- {
		if err := deleteNetns(names[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "del", name).CombinedOutput()
	if err != nil {
		if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
			return nil // deleted concurrently
		}
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nsID identifies a namespace by device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// pidsInNamespaces returns the processes (other than this one) whose
// network namespace is one of the named ones.
func pidsInNamespaces(names []string) []int {
	want := map[nsID]bool{}
	for _, n := range names {
		if id, ok := statNS(filepath.Join(netnsDir, n)); ok {
			want[id] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if id, ok := statNS(fmt.Sprintf("/proc/%d/ns/net", pid)); ok && want[id] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killInNamespaces SIGKILLs every process inside the named namespaces and
// waits (up to a few seconds) until none is left.
func killInNamespaces(names []string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := pidsInNamespaces(names)
		if len(pids) == 0 || time.Now().After(deadline) {
			if len(pids) > 0 {
				slog.Warn("topo: processes survive SIGKILL", "pids", pids)
			}
			return
		}
		for _, pid := range pids {
			slog.Debug("topo: killing process left in namespace", "pid", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// registry tracks the live topologies of this process for the signal
// handler.
var registry struct {
	mu   sync.Mutex
	live map[*Topology]struct{}
	once sync.Once
}

func register(t *Topology) {
	registry.once.Do(installSignalHandler)
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.live == nil {
		registry.live = map[*Topology]struct{}{}
	}
	registry.live[t] = struct{}{}
}

func unregister(t *Topology) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.live, t)
}

// installSignalHandler makes SIGINT and SIGTERM tear down every live
// topology of this process, then end the process by the same signal.
func installSignalHandler() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := (<-ch).(syscall.Signal)
		registry.mu.Lock()
		live := make([]*Topology, 0, len(registry.live))
		for t := range registry.live {
			live = append(live, t)
		}
		registry.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, t := range live {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := t.Close(); err != nil {
					slog.Error("topo: cleanup on signal", "id", t.ID, "err", err)
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			slog.Error("topo: cleanup on signal timed out")
		}
		slog.Info("topo: cleaned up on signal", "signal", sig.String(), "topologies", len(live))
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig)
		time.Sleep(time.Second)
		os.Exit(128 + int(sig))
	}()
}
