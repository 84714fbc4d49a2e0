package gen

import (
	"fmt"
	"strings"

	"github.com/mpshim/mpshim/msgproto/internal/schema"
)

func cStruct(m schema.Message) string { return "mp_" + schema.Snake(m.Name) }
func cTypeConst(m schema.Message) string {
	return "MP_T_" + strings.ToUpper(schema.Snake(m.Name))
}
func cFixedConst(m schema.Message) string {
	return "MP_" + strings.ToUpper(schema.Snake(m.Name)) + "_FIXED"
}

func cType(f schema.Field) string {
	switch f.Kind {
	case schema.U16:
		return "uint16_t"
	case schema.U32, schema.Var, schema.Pad:
		return "uint32_t"
	case schema.U64:
		return "uint64_t"
	case schema.I32:
		return "int32_t"
	case schema.I64:
		return "int64_t"
	case schema.Addr:
		return "struct mp_addr"
	case schema.Bytes:
		return "uint8_t"
	}
	return ""
}

// cParams is the list of data pointers an encoder takes after the struct.
func cParams(m schema.Message, constPtr bool) string {
	var b strings.Builder
	for _, f := range m.VarFields() {
		if constPtr {
			fmt.Fprintf(&b, ", const void *%s", schema.Snake(f.Name))
		} else {
			fmt.Fprintf(&b, ", const uint8_t **%s", schema.Snake(f.Name))
		}
	}
	return b.String()
}

func cConst(s schema.Schema, name string) string {
	for _, c := range s.Consts {
		if c.Name == name {
			return c.CName
		}
	}
	panic("gen: unknown constant " + name)
}

// CHeader returns mpproto.h for s.
func CHeader(s schema.Schema) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var w writer
	w.p("/* %s */", banner)
	w.p("/*")
	w.p(" * mpproto.h: the msgproto wire format for C (the shim). Every message is a")
	w.p(" * 24-byte little-endian header followed by a body: a fixed part whose layout")
	w.p(" * is the struct below, then the bytes of its variable fields in field order.")
	w.p(" * Helpers never allocate. Encoders return the total length written or a")
	w.p(" * negative MP_E_* code; decoders return 0 or a negative MP_E_* code and")
	w.p(" * point variable fields into the caller's buffer, so decode from a private")
	w.p(" * copy, never from memory another process can change.")
	w.p(" */")
	w.p("#ifndef MPPROTO_H")
	w.p("#define MPPROTO_H")
	w.p("")
	w.p("#include <stddef.h>")
	w.p("#include <stdint.h>")
	w.p("#include <string.h>")
	w.p("")
	for _, c := range s.Consts {
		if c.Hex {
			w.p("#define %s 0x%Xu /* %s */", c.CName, c.Value, c.Doc)
		} else {
			w.p("#define %s %du /* %s */", c.CName, c.Value, c.Doc)
		}
	}
	w.p("")
	w.p("/* Message types. */")
	w.p("enum mp_type {")
	for _, m := range s.Messages {
		w.p("\t%s = %d,", cTypeConst(m), m.Code)
	}
	w.p("};")
	w.p("")
	w.p("/* Results of the helpers; they match the Go sentinel errors. */")
	w.p("enum mp_err {")
	w.p("\tMP_OK = 0,")
	w.p("\tMP_E_TRUNCATED = -1,    /* buffer shorter than the header or the message */")
	w.p("\tMP_E_OVERSIZED = -2,    /* length above MP_MAX_MSG */")
	w.p("\tMP_E_UNKNOWN_TYPE = -3, /* type not in enum mp_type */")
	w.p("\tMP_E_BAD_VERSION = -4,  /* version is not MP_VERSION */")
	w.p("\tMP_E_BAD_MAGIC = -5,    /* magic is not MP_MAGIC */")
	w.p("\tMP_E_BAD_LENGTH = -6,   /* lengths disagree */")
	w.p("\tMP_E_BAD_FIELD = -7,    /* a field is out of bounds */")
	w.p("\tMP_E_NOSPACE = -8       /* the output buffer is too small */")
	w.p("};")
	w.p("")
	w.raw(`static inline const char *mp_strerror(int rc)
{
	switch (rc) {
	case MP_OK: return "ok";
	case MP_E_TRUNCATED: return "truncated";
	case MP_E_OVERSIZED: return "oversized";
	case MP_E_UNKNOWN_TYPE: return "unknown type";
	case MP_E_BAD_VERSION: return "bad version";
	case MP_E_BAD_MAGIC: return "bad magic";
	case MP_E_BAD_LENGTH: return "bad length";
	case MP_E_BAD_FIELD: return "bad field";
	case MP_E_NOSPACE: return "no space";
	}
	return "unknown error";
}`)
	w.p("")
	w.p("static inline const char *mp_type_name(uint16_t t)")
	w.p("{")
	w.p("\tswitch (t) {")
	for _, m := range s.Messages {
		w.p("\tcase %s: return %q;", cTypeConst(m), m.Name)
	}
	w.p("\t}")
	w.p("\treturn NULL;")
	w.p("}")
	w.p("")
	w.raw(`/* Little-endian loads and stores; safe at any alignment. */
static inline uint16_t mp_get16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)(p[1] << 8)); }
static inline uint32_t mp_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t mp_get64(const uint8_t *p) { return (uint64_t)mp_get32(p) | (uint64_t)mp_get32(p + 4) << 32; }
static inline void mp_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void mp_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void mp_put64(uint8_t *p, uint64_t v) { mp_put32(p, (uint32_t)v); mp_put32(p + 4, (uint32_t)(v >> 32)); }

/* Header (24 bytes). */
struct mp_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t length; /* total bytes including the header */
	uint32_t flags;  /* MP_FLAG_* */
	uint64_t reqid;
};
_Static_assert(sizeof(struct mp_hdr) == MP_HDR_SIZE, "mp_hdr size");
_Static_assert(offsetof(struct mp_hdr, magic) == 0, "mp_hdr.magic offset");
_Static_assert(offsetof(struct mp_hdr, version) == 4, "mp_hdr.version offset");
_Static_assert(offsetof(struct mp_hdr, type) == 6, "mp_hdr.type offset");
_Static_assert(offsetof(struct mp_hdr, length) == 8, "mp_hdr.length offset");
_Static_assert(offsetof(struct mp_hdr, flags) == 12, "mp_hdr.flags offset");
_Static_assert(offsetof(struct mp_hdr, reqid) == 16, "mp_hdr.reqid offset");

static inline void mp_hdr_init(struct mp_hdr *h, uint16_t type, uint32_t length, uint32_t flags, uint64_t reqid)
{
	h->magic = MP_MAGIC;
	h->version = MP_VERSION;
	h->type = type;
	h->length = length;
	h->flags = flags;
	h->reqid = reqid;
}

static inline void mp_put_hdr(uint8_t *p, const struct mp_hdr *h)
{
	mp_put32(p, h->magic);
	mp_put16(p + 4, h->version);
	mp_put16(p + 6, h->type);
	mp_put32(p + 8, h->length);
	mp_put32(p + 12, h->flags);
	mp_put64(p + 16, h->reqid);
}

static inline void mp_get_hdr(const uint8_t *p, struct mp_hdr *h)
{
	h->magic = mp_get32(p);
	h->version = mp_get16(p + 4);
	h->type = mp_get16(p + 6);
	h->length = mp_get32(p + 8);
	h->flags = mp_get32(p + 12);
	h->reqid = mp_get64(p + 16);
}`)
	w.p("")
	w.p("/* mp_check_hdr parses and validates the header of buf (len bytes). It does")
	w.p(" * not require the whole message to be present; see mp_check_msg. */")
	w.p("static inline int mp_check_hdr(const void *buf, size_t len, struct mp_hdr *h)")
	w.p("{")
	w.p("\tif (len < MP_HDR_SIZE)")
	w.p("\t\treturn MP_E_TRUNCATED;")
	w.p("\tmp_get_hdr((const uint8_t *)buf, h);")
	w.p("\tif (h->magic != MP_MAGIC)")
	w.p("\t\treturn MP_E_BAD_MAGIC;")
	w.p("\tif (h->version != MP_VERSION)")
	w.p("\t\treturn MP_E_BAD_VERSION;")
	w.p("\tif (h->length > MP_MAX_MSG)")
	w.p("\t\treturn MP_E_OVERSIZED;")
	w.p("\tif (h->length < MP_HDR_SIZE)")
	w.p("\t\treturn MP_E_BAD_LENGTH;")
	w.p("\tif (mp_type_name(h->type) == NULL)")
	w.p("\t\treturn MP_E_UNKNOWN_TYPE;")
	w.p("\tif (h->flags & ~(uint32_t)MP_KNOWN_FLAGS)")
	w.p("\t\treturn MP_E_BAD_FIELD;")
	w.p("\treturn MP_OK;")
	w.p("}")
	w.p("")
	w.raw(`/* mp_check_msg validates the header and that buf holds exactly one message;
 * the body is then buf + MP_HDR_SIZE, h->length - MP_HDR_SIZE bytes. */
static inline int mp_check_msg(const void *buf, size_t len, struct mp_hdr *h)
{
	int rc = mp_check_hdr(buf, len, h);
	if (rc != MP_OK)
		return rc;
	if (len < h->length)
		return MP_E_TRUNCATED;
	if (len > h->length)
		return MP_E_BAD_LENGTH;
	return MP_OK;
}

/* Address (28 bytes). */
struct mp_addr {
	uint16_t family; /* MP_AF_UNSPEC, MP_AF_INET or MP_AF_INET6 */
	uint16_t port;   /* port number (host value, little-endian on the wire) */
	uint32_t flowinfo;
	uint32_t scope_id;
	uint8_t addr[16]; /* IPv4 in the first 4 bytes */
};
_Static_assert(sizeof(struct mp_addr) == MP_ADDR_SIZE, "mp_addr size");
_Static_assert(offsetof(struct mp_addr, family) == 0, "mp_addr.family offset");
_Static_assert(offsetof(struct mp_addr, port) == 2, "mp_addr.port offset");
_Static_assert(offsetof(struct mp_addr, flowinfo) == 4, "mp_addr.flowinfo offset");
_Static_assert(offsetof(struct mp_addr, scope_id) == 8, "mp_addr.scope_id offset");
_Static_assert(offsetof(struct mp_addr, addr) == 12, "mp_addr.addr offset");

static inline void mp_put_addr(uint8_t *p, const struct mp_addr *a)
{
	mp_put16(p, a->family);
	mp_put16(p + 2, a->port);
	mp_put32(p + 4, a->flowinfo);
	mp_put32(p + 8, a->scope_id);
	memcpy(p + 12, a->addr, 16);
}

static inline void mp_get_addr(const uint8_t *p, struct mp_addr *a)
{
	a->family = mp_get16(p);
	a->port = mp_get16(p + 2);
	a->flowinfo = mp_get32(p + 4);
	a->scope_id = mp_get32(p + 8);
	memcpy(a->addr, p + 12, 16);
}

/* mp_addr_check: unspec must be all zero; IPv4 uses only port and the first
 * four address bytes; IPv6 may use every field; other families are rejected. */
static inline int mp_addr_check(const struct mp_addr *a)
{
	size_t i, from;
	switch (a->family) {
	case MP_AF_UNSPEC:
		if (a->port != 0)
			return MP_E_BAD_FIELD;
		from = 0;
		break;
	case MP_AF_INET:
		from = 4;
		break;
	case MP_AF_INET6:
		return MP_OK;
	default:
		return MP_E_BAD_FIELD;
	}
	if (a->flowinfo != 0 || a->scope_id != 0)
		return MP_E_BAD_FIELD;
	for (i = from; i < 16; i++)
		if (a->addr[i] != 0)
			return MP_E_BAD_FIELD;
	return MP_OK;
}`)
	for _, m := range s.Messages {
		cMessage(&w, s, m)
	}
	w.p("")
	w.p("#endif /* MPPROTO_H */")
	return w.Bytes(), nil
}

// cCheck emits the value check of one field held in expression v.
func cCheck(w *writer, s schema.Schema, f schema.Field, v string) {
	switch {
	case f.Kind == schema.Addr:
		w.p("\tif ((rc = mp_addr_check(&%s)) != MP_OK)", v)
		w.p("\t\treturn rc;")
	case f.HasRange && (f.Kind == schema.I32 || f.Kind == schema.I64):
		w.p("\tif (%s < %d || %s > %d)", v, f.Min, v, f.SMax)
		w.p("\t\treturn MP_E_BAD_FIELD;")
	case f.HasRange:
		limit := fmt.Sprintf("%du", f.Max)
		if f.MaxConst != "" {
			limit = cConst(s, f.MaxConst)
		}
		w.p("\tif (%s > %s)", v, limit)
		w.p("\t\treturn MP_E_BAD_FIELD;")
	}
}

func needsRC(m schema.Message) bool {
	for _, f := range m.Fields {
		if f.Kind == schema.Addr {
			return true
		}
	}
	return false
}

func cMessage(w *writer, s schema.Schema, m schema.Message) {
	l := m.Layout()
	st, fixed := cStruct(m), cFixedConst(m)
	w.p("")
	w.p("/* %s %s */", m.Name, m.Doc)
	w.p("struct %s {", st)
	for _, f := range m.Fields {
		arr := ""
		if f.Kind == schema.Bytes {
			arr = fmt.Sprintf("[%d]", f.Len)
		}
		doc := f.Doc
		switch f.Kind {
		case schema.Var:
			doc = "length of " + schema.Snake(f.Name) + ": " + doc
		case schema.Pad:
			doc = "reserved, zero"
		}
		w.p("\t%s %s%s; /* %s */", cType(f), f.CName(), arr, doc)
	}
	w.p("};")
	w.p("#define %s %du", fixed, l.Fixed)
	w.p("_Static_assert(sizeof(struct %s) == %s, \"%s size\");", st, fixed, st)
	for i, f := range m.Fields {
		w.p("_Static_assert(offsetof(struct %s, %s) == %d, \"%s.%s offset\");", st, f.CName(), l.Offsets[i], st, f.CName())
	}
	vs := m.VarFields()

	// Encoder.
	w.p("")
	w.p("/* mp_enc_%s writes a whole %s message into buf (cap bytes)", schema.Snake(m.Name), m.Name)
	if len(vs) > 0 {
		w.p(" * taking each variable field's bytes from its pointer and its length from m")
	}
	w.p(" * and returns its length or a negative MP_E_* code. */")
	w.p("static inline int mp_enc_%s(void *buf, size_t cap, uint64_t reqid, uint32_t flags, const struct %s *m%s)",
		schema.Snake(m.Name), st, cParams(m, true))
	w.p("{")
	w.p("\tuint8_t *p = (uint8_t *)buf;")
	w.p("\tsize_t n = MP_HDR_SIZE + %s;", fixed)
	if needsRC(m) {
		w.p("\tint rc;")
	}
	if len(vs) > 0 {
		w.p("\tsize_t off = %s;", fixed)
	}
	w.p("\tstruct mp_hdr h;")
	w.p("\tif (flags & ~(uint32_t)MP_KNOWN_FLAGS)")
	w.p("\t\treturn MP_E_BAD_FIELD;")
	for _, f := range vs {
		w.p("\tif (m->%s > %s)", f.CName(), cConst(s, f.MaxConst))
		w.p("\t\treturn MP_E_BAD_FIELD;")
	}
	for _, f := range m.Fields {
		cCheck(w, s, f, "m->"+f.CName())
	}
	for _, f := range vs {
		w.p("\tn += m->%s;", f.CName())
	}
	w.p("\tif (cap < n)")
	w.p("\t\treturn MP_E_NOSPACE;")
	w.p("\tmp_hdr_init(&h, %s, (uint32_t)n, flags, reqid);", cTypeConst(m))
	w.p("\tmp_put_hdr(p, &h);")
	w.p("\tp += MP_HDR_SIZE;")
	for i, f := range m.Fields {
		off := l.Offsets[i]
		c := f.CName()
		switch f.Kind {
		case schema.U16:
			w.p("\tmp_put16(p + %d, m->%s);", off, c)
		case schema.U32, schema.Var:
			w.p("\tmp_put32(p + %d, m->%s);", off, c)
		case schema.I32:
			w.p("\tmp_put32(p + %d, (uint32_t)m->%s);", off, c)
		case schema.U64:
			w.p("\tmp_put64(p + %d, m->%s);", off, c)
		case schema.I64:
			w.p("\tmp_put64(p + %d, (uint64_t)m->%s);", off, c)
		case schema.Addr:
			w.p("\tmp_put_addr(p + %d, &m->%s);", off, c)
		case schema.Bytes:
			w.p("\tmemcpy(p + %d, m->%s, %d);", off, c, f.Len)
		case schema.Pad:
			w.p("\tmp_put32(p + %d, 0);", off)
		}
	}
	for _, f := range vs {
		w.p("\tif (m->%s != 0)", f.CName())
		w.p("\t\tmemcpy(p + off, %s, m->%s);", schema.Snake(f.Name), f.CName())
		w.p("\toff += m->%s;", f.CName())
	}
	if len(vs) > 0 {
		w.p("\t(void)off;")
	}
	w.p("\treturn (int)n;")
	w.p("}")

	// Decoder.
	w.p("")
	w.p("/* mp_dec_%s decodes a %s body (the len bytes after the header, as", schema.Snake(m.Name), m.Name)
	w.p(" * delimited by mp_check_msg) into m and returns 0 or a negative MP_E_* code.")
	if len(vs) > 0 {
		w.p(" * Each variable field is returned as a pointer into body; copy it out.")
	}
	w.p(" */")
	w.p("static inline int mp_dec_%s(const void *body, size_t len, struct %s *m%s)",
		schema.Snake(m.Name), st, cParams(m, false))
	w.p("{")
	w.p("\tconst uint8_t *p = (const uint8_t *)body;")
	if needsRC(m) {
		w.p("\tint rc;")
	}
	if len(vs) > 0 {
		w.p("\tsize_t off = %s;", fixed)
	}
	w.p("\tif (len < %s)", fixed)
	w.p("\t\treturn MP_E_BAD_LENGTH;")
	for i, f := range m.Fields {
		if f.Kind != schema.Var {
			continue
		}
		w.p("\tm->%s = mp_get32(p + %d);", f.CName(), l.Offsets[i])
		w.p("\tif (m->%s > %s)", f.CName(), cConst(s, f.MaxConst))
		w.p("\t\treturn MP_E_BAD_FIELD;")
	}
	want := fixed
	for _, f := range vs {
		want += " + (size_t)m->" + f.CName()
	}
	w.p("\tif (len != (size_t)%s)", want)
	w.p("\t\treturn MP_E_BAD_LENGTH;")
	for i, f := range m.Fields {
		off := l.Offsets[i]
		c := f.CName()
		switch f.Kind {
		case schema.U16:
			w.p("\tm->%s = mp_get16(p + %d);", c, off)
		case schema.U32:
			w.p("\tm->%s = mp_get32(p + %d);", c, off)
		case schema.I32:
			w.p("\tm->%s = (int32_t)mp_get32(p + %d);", c, off)
		case schema.U64:
			w.p("\tm->%s = mp_get64(p + %d);", c, off)
		case schema.I64:
			w.p("\tm->%s = (int64_t)mp_get64(p + %d);", c, off)
		case schema.Addr:
			w.p("\tmp_get_addr(p + %d, &m->%s);", off, c)
		case schema.Bytes:
			w.p("\tmemcpy(m->%s, p + %d, %d);", c, off, f.Len)
		case schema.Pad:
			w.p("\tm->%s = mp_get32(p + %d);", c, off)
			w.p("\tif (m->%s != 0)", c)
			w.p("\t\treturn MP_E_BAD_FIELD;")
		}
		cCheck(w, s, f, "m->"+c)
	}
	for _, f := range vs {
		w.p("\t*%s = p + off;", schema.Snake(f.Name))
		w.p("\toff += m->%s;", f.CName())
	}
	if len(vs) > 0 {
		w.p("\t(void)off;")
	}
	w.p("\treturn MP_OK;")
	w.p("}")
}

// CDump returns testdata/ctest/mpdump.h: a function that decodes a checked
// message with the mpproto.h helpers, prints the canonical text dump the
// Go test also produces, and re-encodes it.
func CDump(s schema.Schema) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var w writer
	w.p("/* %s */", banner)
	w.p("/* Test-only: canonical dump and re-encode of one message via mpproto.h. */")
	w.p("#ifndef MPDUMP_H")
	w.p("#define MPDUMP_H")
	w.p("")
	w.p("#include <inttypes.h>")
	w.p("#include <stdio.h>")
	w.p("#include \"../../mpproto.h\"")
	w.p("")
	w.raw(`static void mpd_hex(FILE *f, const char *name, const uint8_t *p, size_t n)
{
	size_t i;
	fprintf(f, "%s ", name);
	for (i = 0; i < n; i++)
		fprintf(f, "%02x", p[i]);
	fputc('\n', f);
}

static void mpd_addr(FILE *f, const char *name, const struct mp_addr *a)
{
	size_t i;
	fprintf(f, "%s.Family %u\n", name, (unsigned)a->family);
	fprintf(f, "%s.Port %u\n", name, (unsigned)a->port);
	fprintf(f, "%s.Flowinfo %" PRIu32 "\n", name, a->flowinfo);
	fprintf(f, "%s.ScopeID %" PRIu32 "\n", name, a->scope_id);
	fprintf(f, "%s.IP ", name);
	for (i = 0; i < 16; i++)
		fprintf(f, "%02x", a->addr[i]);
	fputc('\n', f);
}`)
	w.p("")
	w.p("/* mpd_roundtrip decodes the body of a message whose header h passed")
	w.p(" * mp_check_msg, prints its dump to f and re-encodes it into enc. It returns")
	w.p(" * the encoded length or a negative MP_E_* code; nothing is printed on error. */")
	w.p("static int mpd_roundtrip(FILE *f, const struct mp_hdr *h, const uint8_t *body, size_t len, uint8_t *enc, size_t cap)")
	w.p("{")
	w.p("\tint rc;")
	w.p("\tswitch (h->type) {")
	for _, m := range s.Messages {
		w.p("\tcase %s: {", cTypeConst(m))
		w.p("\t\tstruct %s m;", cStruct(m))
		var args, ptrs strings.Builder
		for _, f := range m.VarFields() {
			fmt.Fprintf(&ptrs, "\t\tconst uint8_t *%s = NULL;\n", schema.Snake(f.Name))
			fmt.Fprintf(&args, ", &%s", schema.Snake(f.Name))
		}
		if ptrs.Len() > 0 {
			w.WriteString(ptrs.String())
		}
		w.p("\t\tif ((rc = mp_dec_%s(body, len, &m%s)) != MP_OK)", schema.Snake(m.Name), args.String())
		w.p("\t\t\treturn rc;")
		w.p("\t\tfprintf(f, \"type %s\\nreqid %%\" PRIu64 \"\\nflags %%\" PRIu32 \"\\n\", h->reqid, h->flags);", m.Name)
		for _, f := range m.Fields {
			c := "m." + f.CName()
			switch f.Kind {
			case schema.U16:
				w.p("\t\tfprintf(f, \"%s %%u\\n\", (unsigned)%s);", f.Name, c)
			case schema.U32:
				w.p("\t\tfprintf(f, \"%s %%\" PRIu32 \"\\n\", %s);", f.Name, c)
			case schema.I32:
				w.p("\t\tfprintf(f, \"%s %%\" PRId32 \"\\n\", %s);", f.Name, c)
			case schema.U64:
				w.p("\t\tfprintf(f, \"%s %%\" PRIu64 \"\\n\", %s);", f.Name, c)
			case schema.I64:
				w.p("\t\tfprintf(f, \"%s %%\" PRId64 \"\\n\", %s);", f.Name, c)
			case schema.Addr:
				w.p("\t\tmpd_addr(f, \"%s\", &%s);", f.Name, c)
			case schema.Bytes:
				w.p("\t\tmpd_hex(f, \"%s\", %s, %d);", f.Name, c, f.Len)
			case schema.Var:
				w.p("\t\tmpd_hex(f, \"%s\", %s, %s);", f.Name, schema.Snake(f.Name), c)
			}
		}
		var encArgs strings.Builder
		for _, f := range m.VarFields() {
			fmt.Fprintf(&encArgs, ", %s", schema.Snake(f.Name))
		}
		w.p("\t\treturn mp_enc_%s(enc, cap, h->reqid, h->flags, &m%s);", schema.Snake(m.Name), encArgs.String())
		w.p("\t}")
	}
	w.p("\t}")
	w.p("\treturn MP_E_UNKNOWN_TYPE;")
	w.p("}")
	w.p("")
	w.p("#endif /* MPDUMP_H */")
	return w.Bytes(), nil
}
