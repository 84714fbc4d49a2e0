package ring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestCHeaderFresh(t *testing.T) {
	got, err := os.ReadFile("mpring_layout.h")
	if err != nil {
		t.Fatalf("reading committed header: %v (run go generate ./ring)", err)
	}
	if !bytes.Equal(got, CHeader()) {
		t.Fatal("mpring_layout.h is stale: run go generate ./ring")
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"small", Config{ReqSize: 4096, Slots: 1, SlotSize: 128}, true},
		{"req not power of two", Config{ReqSize: 5000}, false},
		{"req too small", Config{ReqSize: 2048}, false},
		{"too many slots", Config{Slots: MaxSlotCount + 1}, false},
		{"negative slots", Config{Slots: -1}, false},
		{"slot size unaligned", Config{SlotSize: 200}, false},
		{"slot size too small", Config{SlotSize: 64}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, f, err := Create(tc.cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("Create(%+v) error = %v, want ok=%v", tc.cfg, err, tc.ok)
			}
			if err != nil {
				return
			}
			defer r.Close()
			defer f.Close()
			seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
			if err != nil {
				t.Fatal(err)
			}
			want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
			if seals&want != want {
				t.Fatalf("seals = %#x, want %#x set", seals, want)
			}
			if err := f.Truncate(1 << 30); err == nil {
				t.Fatal("sealed memfd could grow")
			}
		})
	}
}

// TestWrapAndReply drives the consumer with the Go test producer through
// many laps of a small ring, so padding records and slot reuse happen.
func TestWrapAndReply(t *testing.T) {
	r := newHeapRing(t, Config{ReqSize: 4096, Slots: 4, SlotSize: 1024, Spin: -1})
	p := testProducer{r}
	ctx := shortCtx(t, 10*time.Second)
	for i := 0; i < 2000; i++ {
		payload := bytes.Repeat([]byte{byte(i)}, (i*37)%700)
		slot := uint32(i % 4)
		p.publish(slot, payload)
		req, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if req.Slot != slot || !bytes.Equal(req.Data, payload) {
			t.Fatalf("request %d: got slot %d len %d, want slot %d len %d", i, req.Slot, len(req.Data), slot, len(payload))
		}
		if err := r.Reply(req.Slot, append([]byte("re:"), req.Data...)); err != nil {
			t.Fatal(err)
		}
		got, ok := p.reply(slot)
		if !ok || !bytes.Equal(got, append([]byte("re:"), payload...)) {
			t.Fatalf("request %d: reply ok=%v len %d", i, ok, len(got))
		}
	}
	if r.head < 10*4096 {
		t.Fatalf("only %d bytes consumed: the ring did not wrap enough", r.head)
	}
}

func TestReplyErrors(t *testing.T) {
	r := newHeapRing(t, Config{ReqSize: 4096, Slots: 2, SlotSize: 128, Spin: -1})
	p := testProducer{r}
	if err := r.Reply(0, nil); !errors.Is(err, ErrNotPending) {
		t.Fatalf("reply to unrequested slot: %v", err)
	}
	if err := r.Reply(7, nil); !errors.Is(err, ErrNotPending) {
		t.Fatalf("reply to slot out of range: %v", err)
	}
	p.publish(1, []byte("x"))
	req, err := r.Next(shortCtx(t, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reply(req.Slot, make([]byte, 65)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized reply: %v", err)
	}
	if err := r.Reply(req.Slot, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if err := r.Reply(req.Slot, []byte("again")); !errors.Is(err, ErrNotPending) {
		t.Fatalf("second reply: %v", err)
	}
}

func TestCorruptRecords(t *testing.T) {
	cfg := Config{ReqSize: 4096, Slots: 4, SlotSize: 128, Spin: -1, StallTimeout: 50 * time.Millisecond}
	tests := []struct {
		name  string
		setup func(r *Ring, p testProducer)
	}{
		{"slot out of range", func(r *Ring, p testProducer) { p.publish(9, []byte("a")) }},
		{"duplicate slot", func(r *Ring, p testProducer) {
			p.publish(1, []byte("a"))
			p.publish(1, []byte("b"))
		}},
		{"wrong position", func(r *Ring, p testProducer) {
			p.publish(0, []byte("a"))
			binary.LittleEndian.PutUint32(r.mem[r.reqOff+RecOffPos:], 77)
		}},
		{"length past ring", func(r *Ring, p testProducer) {
			binary.LittleEndian.PutUint32(r.mem[r.reqOff:], 8192)
		}},
		{"payload longer than record", func(r *Ring, p testProducer) {
			p.publish(0, []byte("abc"))
			binary.LittleEndian.PutUint32(r.mem[r.reqOff+RecOffLen:], 100)
		}},
		{"short padding", func(r *Ring, p testProducer) {
			binary.LittleEndian.PutUint32(r.mem[r.reqOff:], 64|RecPadFlag)
		}},
		{"reservation out of range", func(r *Ring, p testProducer) {
			binary.LittleEndian.PutUint64(r.mem[OffReserve:], 1<<40)
		}},
		{"stalled producer", func(r *Ring, p testProducer) {
			binary.LittleEndian.PutUint64(r.mem[OffReserve:], 64)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newHeapRing(t, cfg)
			tc.setup(r, testProducer{r})
			ctx := shortCtx(t, 5*time.Second)
			var err error
			for i := 0; i < 4 && err == nil; i++ {
				_, err = r.Next(ctx) // no replies: a repeated slot is a fault
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next error = %v, want ErrCorrupt", err)
			}
			if _, err2 := r.Next(ctx); !errors.Is(err2, ErrCorrupt) {
				t.Fatalf("Next after fault = %v, want the fault again", err2)
			}
			if *r.u32(OffDead) == 0 {
				t.Fatal("faulted ring not marked dead")
			}
		})
	}
}

func TestNextHonoursContext(t *testing.T) {
	r := newHeapRing(t, Config{ReqSize: 4096, Slots: 1, SlotSize: 128})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(30 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, err := r.Next(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("Next took %v to notice cancellation", d)
	}
}

// loadServer checks each request of the C producer's load mode and sends
// the derived reply, some of them from other goroutines.
type loadServer struct {
	r       *Ring
	nextSeq map[uint32]uint64
	n       uint64
	async   chan asyncReply
}

type asyncReply struct {
	slot uint32
	data []byte
}

func (s *loadServer) handle(req Request) error {
	d := req.Data
	if len(d) < 20 {
		return fmt.Errorf("request of %d bytes", len(d))
	}
	tid := binary.LittleEndian.Uint32(d)
	plen := binary.LittleEndian.Uint32(d[4:])
	seq := binary.LittleEndian.Uint64(d[8:])
	if uint64(len(d)) != 20+uint64(plen) {
		return fmt.Errorf("thread %d seq %d: length %d, payload %d", tid, seq, len(d), plen)
	}
	h := fnv.New32a()
	h.Write(d[:16+plen])
	sum := binary.LittleEndian.Uint32(d[16+plen:])
	if h.Sum32() != sum {
		return fmt.Errorf("thread %d seq %d: checksum mismatch", tid, seq)
	}
	if want := s.nextSeq[tid] + 1; seq != want {
		return fmt.Errorf("thread %d: seq %d, want %d (lost, duplicated or reordered)", tid, seq, want)
	}
	s.nextSeq[tid] = seq
	out := make([]byte, 16+plen)
	binary.LittleEndian.PutUint64(out, seq^0x5eed5eed5eed5eed)
	binary.LittleEndian.PutUint32(out[8:], tid)
	binary.LittleEndian.PutUint32(out[12:], ^sum)
	for i, b := range d[16 : 16+plen] {
		out[16+i] = b + 1
	}
	s.n++
	if s.n%97 == 0 {
		s.async <- asyncReply{req.Slot, out}
		return nil
	}
	return s.r.Reply(req.Slot, out)
}

var statsRE = regexp.MustCompile(`ok calls=(\d+) cons_wakes=(\d+) reply_wakes=(\d+) cons_sleeps=(\d+) wait_sleeps=(\d+) space_sleeps=(\d+)`)

func TestCrossProcessLoad(t *testing.T) {
	const threads = 8
	perThread := 250_000
	if testing.Short() {
		perThread = 50_000
	}
	buildProducer(t)
	r, f, err := Create(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	cmd, out := startProducer(t, f, "load", strconv.Itoa(threads), strconv.Itoa(perThread))
	f.Close()

	// A guard against a hang, not a speed goal (bench/ring measures
	// speed): alone the run takes a few seconds, beside the e2e suites on
	// two cores up to a minute or two.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := &loadServer{r: r, nextSeq: map[uint32]uint64{}, async: make(chan asyncReply, 256)}
	var wg sync.WaitGroup
	asyncErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for a := range s.async {
			if err := r.Reply(a.slot, a.data); err != nil {
				select {
				case asyncErr <- err:
				default:
				}
			}
		}
	}()
	total := uint64(threads * perThread)
	var serveErr error
	for s.n < total {
		req, err := r.Next(ctx)
		if err != nil {
			serveErr = err
			break
		}
		if err := s.handle(req); err != nil {
			serveErr = err
			break
		}
	}
	close(s.async)
	wg.Wait()
	if serveErr != nil {
		r.MarkDead()
		cmd.Wait()
		t.Fatalf("after %d requests: %v\nproducer output:\n%s", s.n, serveErr, out)
	}
	select {
	case err := <-asyncErr:
		t.Fatalf("async reply: %v", err)
	default:
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("producer: %v\n%s", err, out)
	}
	elapsed := time.Since(start)
	m := statsRE.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("producer output lacks stats:\n%s", out)
	}
	if calls, _ := strconv.ParseUint(m[1], 10, 64); calls != total {
		t.Fatalf("producer made %d calls, want %d", calls, total)
	}
	for tid := uint32(0); tid < threads; tid++ {
		if s.nextSeq[tid] != uint64(perThread) {
			t.Fatalf("thread %d: last seq %d, want %d", tid, s.nextSeq[tid], perThread)
		}
	}
	st := r.Stats()
	if st.Requests != total || st.Replies != total {
		t.Fatalf("stats: %d requests %d replies, want %d", st.Requests, st.Replies, total)
	}
	consWakes, _ := strconv.ParseFloat(m[2], 64)
	replyWakes, _ := strconv.ParseFloat(m[3], 64)
	t.Logf("%d requests in %v (%.0f req/s); per request: consumer wakes %.4f, reply wakes %.4f; consumer sleeps %s, caller sleeps %s, space waits %s",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(),
		consWakes/float64(total), replyWakes/float64(total), m[4], m[5], m[6])
}

func TestCrossProcessErrors(t *testing.T) {
	buildProducer(t)
	r, f, err := Create(Config{ReqSize: 4096, Slots: 4, SlotSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	cmd, out := startProducer(t, f, "errors")
	f.Close()
	ctx := shortCtx(t, 20*time.Second)
	req, err := r.Next(ctx)
	if err != nil || string(req.Data) != "small" {
		t.Fatalf("first request %q, %v", req.Data, err)
	}
	if err := r.Reply(req.Slot, []byte("12345")); err != nil {
		t.Fatal(err)
	}
	req, err = r.Next(ctx)
	if err != nil || string(req.Data) != "block" {
		t.Fatalf("second request %q, %v", req.Data, err)
	}
	time.Sleep(100 * time.Millisecond) // let the caller reach its futex wait
	r.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || !bytes.Contains(out.Bytes(), []byte("ok errors")) {
			t.Fatalf("producer: %v\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("producer hung after the ring closed\n%s", out)
	}
}

// peerPollMS is MPRING_PEER_POLL_MS of mpring.h.
const peerPollMS = 20

// TestCrossProcessPeerHangUp: a consumer killed outright never marks the
// ring dead; its end of the peer descriptor (the shim's registration
// connection) closes. A call waiting for its reply must then fail with
// EPIPE promptly instead of waiting forever.
func TestCrossProcessPeerHangUp(t *testing.T) {
	buildProducer(t)
	r, f, err := Create(Config{ReqSize: 4096, Slots: 4, SlotSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "peer"), os.NewFile(uintptr(fds[1]), "peer")
	defer mine.Close()
	cmd := exec.Command(buildProducer(t), "peer")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{f, theirs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	theirs.Close()
	ctx := shortCtx(t, 20*time.Second)
	req, err := r.Next(ctx)
	if err != nil || string(req.Data) != "block" {
		t.Fatalf("request %q, %v", req.Data, err)
	}
	time.Sleep(100 * time.Millisecond) // let the caller reach its futex wait
	start := time.Now()
	mine.Close() // the consumer "dies": the ring stays alive
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || !bytes.Contains(out.Bytes(), []byte("ok peer")) {
			t.Fatalf("producer: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("producer still waiting 10 s after its peer hung up\n%s", out.String())
	}
	t.Logf("the waiting call failed %v after the hang-up (poll period %d ms); %s",
		time.Since(start).Round(time.Millisecond), peerPollMS, bytes.TrimSpace(out.Bytes()))
}

// TestCreatePopulatesRequestRing: the header and request ring of a new ring
// are resident in the consumer's mapping from the start (its RSS does not
// creep up as calls go round the ring), the response slots are not.
func TestCreatePopulatesRequestRing(t *testing.T) {
	cfg := Config{ReqSize: 1 << 20, Slots: 16, SlotSize: 64 << 10}
	r, f, err := Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer r.Close()
	// The kernel's answer to MADV_POPULATE_WRITE on a scratch mapping
	// says whether it has it (5.14).
	probe, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	perr := unix.Madvise(probe, unix.MADV_POPULATE_WRITE)
	unix.Munmap(probe)
	if perr != nil {
		t.Skipf("the kernel has no MADV_POPULATE_WRITE (%v): the ring's pages come in lazily", perr)
	}
	vec := make([]byte, len(r.mem)/4096)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&r.mem[0])), uintptr(len(r.mem)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	reqPages := (HeaderSize + cfg.ReqSize) / 4096
	for i := 0; i < reqPages; i++ {
		if vec[i]&1 == 0 {
			t.Fatalf("page %d of the header and request ring (%d pages) is not resident", i, reqPages)
		}
	}
	resident := 0
	for _, v := range vec[reqPages:] {
		resident += int(v & 1)
	}
	if resident != 0 {
		t.Errorf("%d of the %d pages of the response slots are resident; want none before a reply", resident, len(vec)-reqPages)
	}
}
