package ring

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// needCC returns a C compiler or ends the test: it fails under CI=true and
// skips otherwise.
func needCC(t testing.TB) string {
	t.Helper()
	for _, cc := range []string{os.Getenv("CC"), "cc", "gcc"} {
		if cc == "" {
			continue
		}
		if p, err := exec.LookPath(cc); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no C compiler found (cc/gcc/$CC); the cross-process tests need one")
	}
	t.Skip("no C compiler found (cc/gcc/$CC); cross-process tests need one")
	return ""
}

var (
	producerOnce sync.Once
	producerPath string
	producerErr  error
	producerOut  []byte
	producerDir  string
)

// buildProducer compiles testdata/producer.c with mpring.c once per test
// binary run.
func buildProducer(t testing.TB) string {
	t.Helper()
	cc := needCC(t)
	producerOnce.Do(func() {
		producerDir, producerErr = os.MkdirTemp("", "mpring-producer")
		if producerErr != nil {
			return
		}
		producerPath = filepath.Join(producerDir, "producer")
		cmd := exec.Command(cc, "-O2", "-pthread", "-Wall", "-Wextra", "-Werror",
			"-o", producerPath, "testdata/producer.c", "mpring.c")
		producerOut, producerErr = cmd.CombinedOutput()
	})
	if producerErr != nil {
		t.Fatalf("compiling producer: %v\n%s", producerErr, producerOut)
	}
	return producerPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if producerDir != "" {
		os.RemoveAll(producerDir)
	}
	os.Exit(code)
}

// startProducer runs the compiled producer with the ring's memfd as fd 3.
func startProducer(t testing.TB, f *os.File, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(buildProducer(t), args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting producer: %v", err)
	}
	return cmd, &out
}

// heapRegion returns an 8-byte aligned zeroed buffer of n bytes.
func heapRegion(n uint64) []byte {
	words := make([]uint64, (n+7)/8)
	return unsafeBytes(words)[:n]
}

// newHeapRing builds a consumer over ordinary memory with a test producer.
func newHeapRing(t testing.TB, cfg Config) *Ring {
	t.Helper()
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	r := newRing(heapRegion(regionSize(cfg)), cfg)
	r.writeHeader()
	return r
}

// testProducer is a single-threaded Go rendering of the producer protocol,
// used to place exact records in a ring.
type testProducer struct{ r *Ring }

// publish writes one record for slot and returns its position.
func (p testProducer) publish(slot uint32, payload []byte) uint64 {
	r := p.r
	need := alignUp(RecHdrSize + uint64(len(payload)))
	pos := atomic.LoadUint64(r.u64(OffReserve))
	off := pos & r.mask
	if off+need > r.reqSz {
		atomic.StoreUint32(r.u32(r.reqOff+off), uint32(r.reqSz-off)|RecPadFlag)
		pos += r.reqSz - off
		off = 0
	}
	atomic.StoreUint64(r.u64(OffReserve), pos+need)
	base := r.reqOff + off
	binary.LittleEndian.PutUint32(r.mem[base+RecOffLen:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(r.mem[base+RecOffSlot:], slot)
	binary.LittleEndian.PutUint32(r.mem[base+RecOffPos:], uint32(pos))
	copy(r.mem[base+RecHdrSize:], payload)
	atomic.StoreUint32(r.u32(base+RecOffCommit), uint32(need))
	return pos
}

// reply returns the reply in slot if its state is SlotDone.
func (p testProducer) reply(slot uint32) ([]byte, bool) {
	r := p.r
	base := r.slotOf + uint64(slot)*r.slotSz
	if atomic.LoadUint32(r.u32(base+SlotOffState)) != SlotDone {
		return nil, false
	}
	n := binary.LittleEndian.Uint32(r.mem[base+SlotOffLen:])
	out := append([]byte(nil), r.mem[base+SlotHdrSize:base+SlotHdrSize+uint64(n)]...)
	atomic.StoreUint32(r.u32(base+SlotOffState), SlotIdle)
	return out, true
}

func shortCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
