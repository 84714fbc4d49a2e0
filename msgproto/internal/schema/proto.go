package schema

// Limits used by field bounds below.
const (
	maxOptLen   = 256
	maxIoctlArg = 256
	maxDatagram = 65535
	maxControl  = 256
	maxErrno    = 4095
	maxName     = 255
	maxAddrs    = 64
	maxAddrList = maxAddrs * AddrSize
	maxStatus   = 4
)

func u64(name, doc string) Field { return Field{Name: name, Kind: U64, Doc: doc} }
func u32(name, doc string) Field { return Field{Name: name, Kind: U32, Doc: doc} }
func u16(name, doc string) Field { return Field{Name: name, Kind: U16, Doc: doc} }
func i32(name, doc string) Field { return Field{Name: name, Kind: I32, Doc: doc} }
func i64(name, doc string) Field { return Field{Name: name, Kind: I64, Doc: doc} }
func addr(name, doc string) Field {
	return Field{Name: name, Kind: Addr, Doc: doc}
}
func pad(name string) Field { return Field{Name: name, Kind: Pad} }
func varb(name, maxConst string, max uint64, doc string) Field {
	return Field{Name: name, Kind: Var, Max: max, MaxConst: maxConst, Doc: doc}
}
func boundedU32(name, maxConst string, max uint64, doc string) Field {
	return Field{Name: name, Kind: U32, HasRange: true, Max: max, MaxConst: maxConst, Doc: doc}
}

const sockDoc = "socket id assigned by the isolator"

// Proto is the msgproto protocol, version 1.
var Proto = Schema{
	Consts: []Const{
		{Name: "Magic", CName: "MP_MAGIC", Value: 0x4D50534D, Hex: true, Doc: `"MPSM" read as a little-endian u32`},
		{Name: "Version", CName: "MP_VERSION", Value: 1, Doc: "protocol version carried in every header"},
		{Name: "FlagFD", CName: "MP_FLAG_FD", Value: 1, Hex: true, Doc: "a file descriptor accompanies the message out of band"},
		{Name: "KnownFlags", CName: "MP_KNOWN_FLAGS", Value: 1, Hex: true, Doc: "every header flag bit this version defines; others are rejected"},
		{Name: "HeaderSize", CName: "MP_HDR_SIZE", Value: HeaderSize, Doc: "size of the fixed message header"},
		{Name: "AddrSize", CName: "MP_ADDR_SIZE", Value: AddrSize, Doc: "size of an encoded address"},
		{Name: "MaxMessage", CName: "MP_MAX_MSG", Value: 64<<10 + 512, Doc: "largest total message length; anything longer is oversized"},
		{Name: "MaxOptLen", CName: "MP_MAX_OPTLEN", Value: maxOptLen, Doc: "largest socket option value"},
		{Name: "MaxIoctlArg", CName: "MP_MAX_IOCTL_ARG", Value: maxIoctlArg, Doc: "largest ioctl argument block"},
		{Name: "MaxDatagram", CName: "MP_MAX_DATAGRAM", Value: maxDatagram, Doc: "largest datagram payload"},
		{Name: "MaxControl", CName: "MP_MAX_CONTROL", Value: maxControl, Doc: "largest ancillary (cmsg) block of SendMsg/RecvMsg"},
		{Name: "MaxErrno", CName: "MP_MAX_ERRNO", Value: maxErrno, Doc: "largest errno a Reply may carry"},
		{Name: "RegForked", CName: "MP_REG_FORKED", Value: 1, Doc: "Register flag: first registration of a fork child; Parent is the parent's client id"},
		{Name: "RegExeced", CName: "MP_REG_EXECED", Value: 2, Doc: "Register flag: a new image of an already registered process; Parent is the previous image's client id"},
		{Name: "RegRejoin", CName: "MP_REG_REJOIN", Value: 3, Doc: "Register flag: a process whose isolator daemon died registers with its successor; Key is the key of its socket group under the dead daemon, which the successor keeps as the group's key (the first process to present it makes the group, the others join it); Parent is 0"},
		{Name: "RegProbe", CName: "MP_REG_PROBE", Value: 4, Doc: "Register flag: only ask whether this process may register; the isolator checks uid/gid, version, pid and start time, answers Reply (Errno 0 or the refusal) and admits nothing"},
		{Name: "ConnectNonblock", CName: "MP_CONNECT_NONBLOCK", Value: 1, Doc: "Connect flag: the app's fd is nonblocking; the reply is EINPROGRESS at once"},
		{Name: "FamilyUnspec", CName: "MP_AF_UNSPEC", Value: 0, Doc: "address family: none (e.g. connected SendTo)"},
		{Name: "FamilyInet", CName: "MP_AF_INET", Value: 2, Doc: "address family: IPv4 (Linux AF_INET)"},
		{Name: "FamilyInet6", CName: "MP_AF_INET6", Value: 10, Doc: "address family: IPv6 (Linux AF_INET6)"},
		{Name: "MaxName", CName: "MP_MAX_NAME", Value: maxName, Doc: "largest host name of Resolve and ResolveReply, in bytes"},
		{Name: "MaxResolveAddrs", CName: "MP_MAX_RESOLVE_ADDRS", Value: maxAddrs, Doc: "most addresses one ResolveReply carries"},
		{Name: "MaxAddrList", CName: "MP_MAX_ADDR_LIST", Value: maxAddrList, Doc: "largest address list of a ResolveReply: MaxResolveAddrs address blocks"},
		{Name: "ResolveReverse", CName: "MP_RESOLVE_REVERSE", Value: 1, Doc: "Resolve flag: look up the host name of Addr (PTR) instead of the addresses of Name"},
		{Name: "ResolveOK", CName: "MP_RESOLVE_OK", Value: 0, Doc: "ResolveReply status: the name resolved"},
		{Name: "ResolveNoName", CName: "MP_RESOLVE_NONAME", Value: 1, Doc: "ResolveReply status: the name does not exist (NXDOMAIN)"},
		{Name: "ResolveNoData", CName: "MP_RESOLVE_NODATA", Value: 2, Doc: "ResolveReply status: the name exists but has no record of the wanted family"},
		{Name: "ResolveAgain", CName: "MP_RESOLVE_AGAIN", Value: 3, Doc: "ResolveReply status: no answer now (timeout, SERVFAIL, no nameserver reachable); a later try may succeed"},
		{Name: "ResolveFail", CName: "MP_RESOLVE_FAIL", Value: maxStatus, Doc: "ResolveReply status: the nameservers refused or answered nonsense; trying again will not help"},
		{Name: "ResolveHas4", CName: "MP_RESOLVE_HAS4", Value: 1, Doc: "ResolveReply family bit: the INS has an IPv4 uplink address"},
		{Name: "ResolveHas6", CName: "MP_RESOLVE_HAS6", Value: 2, Doc: "ResolveReply family bit: the INS has an IPv6 uplink address"},
	},
	Messages: []Message{
		// Requests: 1..63.
		{Name: "Register", Code: 1, Doc: "is the first request of a process: it identifies the process to the isolator.", Fields: []Field{
			u32("PID", "process id"),
			u16("ProtoVersion", "msgproto version the shim speaks"),
			u16("Flags", "registration flags"),
			u64("StartTime", "process start time in clock ticks (/proc/PID/stat field 22)"),
			{Name: "Comm", Kind: Bytes, Len: 16, Doc: "process name, NUL padded"},
			u64("Parent", "client id of the parent (RegForked) or of the previous image (RegExeced); 0 otherwise"),
			u64("Key", "the socket group's key from the parent's RegisterReply (RegForked, RegExeced, RegRejoin): proof that the process descends from a member; 0 otherwise"),
		}},
		{Name: "Socket", Code: 2, Doc: "asks for a new socket (socket(2)).", Fields: []Field{
			i32("Domain", "address family"),
			{Name: "SockType", C: "type", Kind: I32, Doc: "socket type including SOCK_NONBLOCK and SOCK_CLOEXEC bits (named SockType in Go because Type is the message type)"},
			i32("Protocol", "protocol number"),
		}},
		{Name: "Bind", Code: 3, Doc: "binds a socket to a local address (bind(2)).", Fields: []Field{
			u64("Sock", sockDoc),
			addr("Addr", "local address"),
			pad("pad0"),
		}},
		{Name: "Listen", Code: 4, Doc: "makes a socket listen (listen(2)).", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Backlog", "requested backlog"),
			pad("pad0"),
		}},
		{Name: "Connect", Code: 5, Doc: "connects a socket (connect(2)).", Fields: []Field{
			u64("Sock", sockDoc),
			addr("Addr", "remote address"),
			u32("Flags", "connect flags (ConnectNonblock: the app's fd is nonblocking)"),
			u32("Filler", "bytes the app wrote into its socketpair end to hold it unwritable while connecting; the INS discards them once connected"),
			pad("pad0"),
		}},
		{Name: "Shutdown", Code: 6, Doc: "shuts down part of a connection (shutdown(2)).", Fields: []Field{
			u64("Sock", sockDoc),
			i32("How", "SHUT_RD, SHUT_WR or SHUT_RDWR"),
			pad("pad0"),
		}},
		{Name: "Close", Code: 7, Doc: "notifies the isolator that the app closed its last reference to a socket.", Fields: []Field{
			u64("Sock", sockDoc),
		}},
		{Name: "Setsockopt", Code: 8, Doc: "sets a socket option (setsockopt(2)).", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Level", "option level"),
			i32("Name", "option name"),
			varb("Value", "MaxOptLen", maxOptLen, "option value"),
			pad("pad0"),
		}},
		{Name: "Getsockopt", Code: 9, Doc: "reads a socket option (getsockopt(2)); answered by OptReply.", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Level", "option level"),
			i32("Name", "option name"),
			boundedU32("MaxLen", "MaxOptLen", maxOptLen, "size of the app's buffer, clamped by the sender to MaxOptLen"),
			pad("pad0"),
		}},
		{Name: "Getsockname", Code: 10, Doc: "asks for a socket's local address; answered by AddrReply.", Fields: []Field{
			u64("Sock", sockDoc),
		}},
		{Name: "Getpeername", Code: 11, Doc: "asks for a socket's peer address; answered by AddrReply.", Fields: []Field{
			u64("Sock", sockDoc),
		}},
		{Name: "Ioctl", Code: 12, Doc: "forwards a socket ioctl; answered by IoctlReply.", Fields: []Field{
			u64("Sock", sockDoc),
			u64("Request", "ioctl request number"),
			varb("Arg", "MaxIoctlArg", maxIoctlArg, "argument block the request reads"),
			pad("pad0"),
		}},
		{Name: "SendTo", Code: 13, Doc: "sends one datagram (sendto(2)); answered by Reply with the byte count in Value.", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Flags", "MSG_* flags"),
			addr("Addr", "destination; family FamilyUnspec means the connected peer"),
			varb("Payload", "MaxDatagram", maxDatagram, "datagram"),
			pad("pad0"),
		}},
		{Name: "RecvFrom", Code: 14, Doc: "receives one datagram (recvfrom(2)); answered by RecvReply.", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Flags", "MSG_* flags"),
			boundedU32("MaxLen", "MaxDatagram", maxDatagram, "size of the app's buffer, clamped by the sender to MaxDatagram"),
		}},
		{Name: "SendMsg", Code: 15, Doc: "sends one datagram with ancillary data (sendmsg(2)); answered by Reply with the byte count in Value.", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Flags", "MSG_* flags"),
			addr("Addr", "destination; family FamilyUnspec means the connected peer"),
			varb("Control", "MaxControl", maxControl, "ancillary data (cmsg buffer)"),
			varb("Payload", "MaxDatagram", maxDatagram, "datagram (the gathered iovecs)"),
		}},
		{Name: "RecvMsg", Code: 16, Doc: "receives one datagram with ancillary data (recvmsg(2)); answered by RecvMsgReply.", Fields: []Field{
			u64("Sock", sockDoc),
			i32("Flags", "MSG_* flags"),
			boundedU32("MaxLen", "MaxDatagram", maxDatagram, "total size of the app's iovecs, clamped by the sender to MaxDatagram"),
			boundedU32("MaxControl", "MaxControl", maxControl, "size of the app's control buffer, clamped by the sender to MaxControl"),
			pad("pad0"),
		}},

		{Name: "FDPass", Code: 17, Doc: "carries the descriptors of the ring request with the same request id on the registration connection (FlagFD).", Fields: []Field{
			u32("Count", "number of descriptors attached"),
			pad("pad0"),
		}},

		{Name: "Resolve", Code: 18, Doc: "resolves a host name to addresses, or an address to its host name (ResolveReverse), through the nameservers of the INS; answered by ResolveReply. An empty Name without ResolveReverse only asks for the families.", Fields: []Field{
			i32("Family", "FamilyInet, FamilyInet6 or FamilyUnspec (both) for a name; ignored for ResolveReverse"),
			u32("Flags", "ResolveReverse"),
			addr("Addr", "ResolveReverse: the address (port 0); FamilyUnspec otherwise"),
			varb("Name", "MaxName", maxName, "the host name (no NUL); empty for ResolveReverse"),
		}},

		// Replies: 64..127.
		{Name: "Reply", Code: 64, Doc: "is the generic reply; any request may be answered by a Reply carrying an errno.", Fields: []Field{
			{Name: "Errno", C: "err", Kind: I32, HasRange: true, Min: 0, SMax: maxErrno, Doc: "0 on success, otherwise the exact positive Linux errno"},
			pad("pad0"),
			i64("Value", "result value (e.g. a byte count)"),
		}},
		{Name: "RegisterReply", Code: 65, Doc: "accepts a Register; the ring memfd travels with FlagFD.", Fields: []Field{
			u64("ClientID", "id the isolator gives this process"),
			u32("RingSize", "size in bytes of the ring memfd"),
			u32("Flags", "registration flags"),
			u64("Key", "secret key of the client's socket group; a fork child or a new image presents it to join the group"),
		}},
		{Name: "SocketReply", Code: 66, Doc: "answers Socket; the app's socketpair end travels with FlagFD.", Fields: []Field{
			u64("Sock", "id of the new socket"),
		}},
		{Name: "OptReply", Code: 67, Doc: "answers Getsockopt with the option value.", Fields: []Field{
			varb("Value", "MaxOptLen", maxOptLen, "option value"),
		}},
		{Name: "AddrReply", Code: 68, Doc: "answers Getsockname and Getpeername.", Fields: []Field{
			addr("Addr", "the address"),
		}},
		{Name: "IoctlReply", Code: 69, Doc: "answers Ioctl.", Fields: []Field{
			i64("Result", "ioctl return value"),
			varb("Arg", "MaxIoctlArg", maxIoctlArg, "argument block as the request leaves it"),
			pad("pad0"),
		}},
		{Name: "RecvReply", Code: 70, Doc: "answers RecvFrom with one datagram.", Fields: []Field{
			addr("Addr", "source address"),
			i32("Flags", "resulting MSG_* flags (e.g. MSG_TRUNC)"),
			u32("FullLen", "length of the datagram before truncation"),
			varb("Payload", "MaxDatagram", maxDatagram, "datagram, truncated to the requested length"),
		}},
		{Name: "RecvMsgReply", Code: 71, Doc: "answers RecvMsg with one datagram and its ancillary data.", Fields: []Field{
			addr("Addr", "source address"),
			i32("Flags", "resulting msg_flags (e.g. MSG_TRUNC, MSG_CTRUNC)"),
			u32("FullLen", "length of the datagram before truncation"),
			varb("Control", "MaxControl", maxControl, "ancillary data"),
			varb("Payload", "MaxDatagram", maxDatagram, "datagram, truncated to the requested length"),
		}},

		{Name: "ResolveReply", Code: 72, Doc: "answers Resolve.", Fields: []Field{
			{Name: "Status", Kind: I32, HasRange: true, Min: 0, SMax: maxStatus, Doc: "ResolveOK, ResolveNoName, ResolveNoData, ResolveAgain or ResolveFail"},
			u32("Families", "ResolveHas4 and ResolveHas6 bits: the address families the INS can reach the network with (AI_ADDRCONFIG)"),
			u32("TTL", "seconds the answer stays valid"),
			varb("Canon", "MaxName", maxName, "the canonical name (the end of the CNAME chain) or, for ResolveReverse, the host name"),
			varb("Addrs", "MaxAddrList", maxAddrList, "the addresses, most preferred first: a sequence of address blocks with port 0"),
		}},

		{Name: "RegisterRefused", Code: 73, Doc: "answers a registration connection whose peer credentials (SO_PEERCRED) the isolator's policy " +
			"(allow_uids, allow_gids) does not admit. The isolator sends it as soon as it accepts the connection, " +
			"before it reads anything, and then closes the connection. It is a refusal, not an absence: a refused " +
			"process must not fall back to the host kernel (MPSHIM_FAIL=open applies only when no isolator answers).", Fields: []Field{
			u32("UID", "the peer's uid as the kernel reported it"),
			u32("GID", "the peer's gid as the kernel reported it"),
			i32("PID", "the peer's pid as the kernel reported it"),
			{Name: "Errno", C: "err", Kind: I32, HasRange: true, Min: 1, SMax: maxErrno, Doc: "the errno the refused process's socket calls fail with (EACCES)"},
		}},

		// Notifications: 128..
		{Name: "AcceptNotify", Code: 128, Doc: "is sent by an INS on a listener's SEQPACKET end, with the new connection's fd (FlagFD).", Fields: []Field{
			u64("Listener", "id of the listening socket"),
			u64("Sock", "id of the accepted socket"),
			addr("Local", "local address of the connection"),
			addr("Peer", "peer address of the connection"),
		}},
		{Name: "Datagram", Code: 129, Doc: "frames one datagram on a UDP socket's SEQPACKET socketpair, in both directions. " +
			"Only its 36-byte body travels there, without the message header: each SEQPACKET message is " +
			"this body followed by exactly Len bytes of payload, so one datagram is one message and " +
			"readiness, MSG_PEEK and MSG_TRUNC are the kernel's own. From the INS, Addr is the sender " +
			"(in the socket's family) and Flags is zero; from the app, Addr is the destination " +
			"(FamilyUnspec: the connected peer) and Flags holds the send's MSG_* flags. A message whose " +
			"length is not 36+Len is malformed and dropped. Errors of a datagram sent this way are " +
			"asynchronous (SO_ERROR); a send that needs its errno at once goes through SendTo on the ring.", Fields: []Field{
			addr("Addr", "sender (INS to app) or destination (app to INS); FamilyUnspec means the connected peer"),
			u32("Flags", "MSG_* flags of the send (app to INS); zero from the INS"),
			boundedU32("Len", "MaxDatagram", maxDatagram, "payload length in bytes; the payload follows the body"),
		}},
	},
}
