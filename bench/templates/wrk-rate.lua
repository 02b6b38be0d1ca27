-- wrk at a fixed offered rate: each of @connections@ connections waits a random 0..@max_delay_ms@ ms
-- (mean @mean_delay_ms@ ms = connections / rate) before each request, so the total offered rate is
-- about @rate@ req/s (a little less: the response time adds to each connection's cycle), and
-- the random waits keep the connections from firing in step.
local counter = 0

function setup(thread)
    counter = counter + 1
    thread:set("seed", counter)
end

function init(args)
    math.randomseed(os.time() * 1000 + seed)
end

function delay()
    return math.random(0, @max_delay_ms@)
end
