package isolator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"time"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
)

// ServeDebug serves Go profiles over HTTP on addr until ctx ends: the
// daemon's own under /debug/pprof/ (net/http/pprof), and each INS's under
// /debug/ins/ID/profile?seconds=N (CPU) and /debug/ins/ID/heap (?debug=1:
// as text, with the runtime's memory statistics). An INS is
// sandboxed and cannot listen itself: it writes its profile into a pipe the
// daemon hands it over the control channel. It is off unless the operator
// asks for it (isolator run --pprof); bind it to loopback.
func (d *Daemon) ServeDebug(ctx context.Context, addr string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/ins/{id}/profile", func(w http.ResponseWriter, r *http.Request) {
		secs, err := strconv.Atoi(r.URL.Query().Get("seconds"))
		if err != nil {
			secs = 30
		}
		d.serveINSProfile(w, r, ins.ManageRequest{Op: ins.ManageProfile, Profile: "cpu", Seconds: secs})
	})
	mux.HandleFunc("/debug/ins/{id}/heap", func(w http.ResponseWriter, r *http.Request) {
		dbg, _ := strconv.Atoi(r.URL.Query().Get("debug"))
		d.serveINSProfile(w, r, ins.ManageRequest{Op: ins.ManageProfile, Profile: "heap", Debug: dbg})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pprof listener: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	d.log.Info("serving profiles", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("pprof server: %w", err)
	}
	return nil
}

func (d *Daemon) serveINSProfile(w http.ResponseWriter, r *http.Request, req ins.ManageRequest) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		http.Error(w, "INS id: want a number from `isolator ls`", http.StatusBadRequest)
		return
	}
	b, ok := d.Get(id)
	if !ok {
		http.Error(w, fmt.Sprintf("no INS %d", id), http.StatusNotFound)
		return
	}
	p := b.(*insProc)
	pr, pw, err := os.Pipe()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer pr.Close()
	payload, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	m, err := p.ch.Call(ctx, ctrl.Frame{Kind: ctrl.KindManage}, payload, pw)
	cancel()
	pw.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	m.CloseFiles()
	var st ins.Status
	if err := json.Unmarshal(m.Payload, &st); err != nil || st.Error != "" {
		http.Error(w, fmt.Sprintf("INS %d: %v%s", id, err, st.Error), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="ins%d-%s.pprof"`, id, req.Profile))
	_, _ = io.Copy(w, pr)
}
