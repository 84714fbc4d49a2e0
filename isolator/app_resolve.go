package isolator

import (
	"context"
	"hash/fnv"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// resolve sends a name lookup to an INS. The same name always goes to the
// same INS while the set of INS stays the same, so each INS's cache holds
// its share of the names instead of every INS caching every name.
func (s *AppServer) resolve(ctx context.Context, c *client, m *msgproto.Resolve) (msgproto.Message, unix.Errno) {
	all := s.backends.All()
	if len(all) == 0 {
		c.log.Warn("app: no INS for a name lookup")
		return nil, unix.ENETDOWN
	}
	slices.SortFunc(all, func(a, b Backend) int { return a.ID() - b.ID() })
	h := fnv.New32a()
	h.Write(m.Name)
	h.Write(m.Addr.IP[:])
	b := all[h.Sum32()%uint32(len(all))]
	reply, err := b.Call(ctx, c.group, m)
	if err != nil {
		return nil, errnoOf(err)
	}
	switch reply.(type) {
	case *msgproto.ResolveReply, *msgproto.Reply:
		return reply, 0
	}
	c.log.Warn("app: INS answered a name lookup with something else", "ins", b.ID(), "type", typeName(reply))
	return nil, unix.EIO
}

func typeName(m msgproto.Message) string {
	if m == nil {
		return "nothing"
	}
	return m.Type().String()
}
