package isolator

import (
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
)

// readCtrl receives on the INS's control channel until it closes: replies
// go to their calls, notices are taken here.
func (p *insProc) readCtrl() {
	_ = p.ch.ReadLoop(func(m ctrl.Msg) {
		m.CloseFiles()
		if m.Kind == ctrl.KindNotify {
			p.notice(m.Payload)
		}
	})
}

// notice takes a KindNotify frame from the INS. A malformed notice is
// dropped: the INS is a separate, sandboxed process whose bytes are
// checked like any other input.
func (p *insProc) notice(b []byte) {
	n, err := ins.ParseNotice(b)
	if err != nil {
		p.log.Debug("bad notice from INS", "err", err)
		return
	}
	l := *n.Load
	p.load.Store(&l)
}

// liveSockets estimates the sockets alive on the INS now, without asking
// it: the count of its last load notice plus the sockets placed on it since
// the INS counted them. Sockets end when the app's last descriptor closes,
// which only the INS sees (and reports, at most every ins.LoadReportGap);
// placements are counted here at once, so a burst of new sockets spreads
// over the INS even between notices.
func (p *insProc) liveSockets() int64 {
	placed := p.placed.Load()
	l := p.load.Load()
	if l == nil {
		return int64(placed)
	}
	ahead := int64(placed) - int64(l.Placed)
	if ahead < 0 {
		// The notice counted a placement whose reply is still on its
		// way here.
		ahead = 0
	}
	return int64(l.Sockets) + ahead
}
