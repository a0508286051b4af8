#!/usr/bin/env ruby
# What the 2014 seed's Ruby event handler did, kept as a benchmark baseline (not for use):
# read the member line(s) Serf writes on stdin, append a `server` line per member to a copy
# of haproxy.cfg, and run a reload command. No validation, no state, no removal, no escaping
# (a hostile node name goes straight into the config): that is the point of the rewrite.
#
#   seed_handler.rb BASE_CFG OUT_CFG RELOAD_ARGV...
#
# stdin: NAME<TAB>ADDR<TAB>ROLE<TAB>TAGS per member, as Serf writes it for member events.

base, out, *reload = ARGV
abort "usage: seed_handler.rb BASE_CFG OUT_CFG RELOAD_ARGV..." if base.nil? || out.nil? || reload.empty?

config = File.read(base)
STDIN.each_line do |line|
  name, addr, role, tags = line.chomp.split("\t")
  next unless role == "web"
  port = (tags || "").split(",").map { |kv| kv.split("=", 2) }.to_h.fetch("port", "80")
  config << "    server #{name} #{addr}:#{port} check\n"
end
File.write(out, config)
exit(system(*reload) ? 0 : 1)
