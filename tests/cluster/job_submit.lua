-- Savio's submit-time rules for the test cluster (installed by slurm_local_start.sh as job_submit.lua).
-- BRC's scheduler-examples page: "Jobs submitted that do not request sufficient CPUs for every GPU will be
-- rejected by the scheduler" (at least 2 per GTX2080TI, 4 per TITAN/V100/A5000, 8 per A40), and a regular
-- FCA job on a GPU type must use that type's QoS (a40_gpu3_normal for an A40, ...) or savio_lowprio.

local MIN_CPUS = { a5000 = 4, a40 = 8, v100 = 4, titan = 4, gtx2080ti = 2, l40 = 8 }
local TYPE_QOS = {
  a5000 = "a5k_gpu4_normal", a40 = "a40_gpu3_normal", v100 = "v100_gpu3_normal", gtx2080ti = "gtx2080_gpu3_normal",
}
local TYPE_QOS_NAMES = {}
for _, q in pairs(TYPE_QOS) do TYPE_QOS_NAMES[q] = true end
local NO_VAL16 = 65534
local NO_VAL = 4294967294

local function set(v, none) return v ~= nil and v ~= none and v ~= NO_VAL and v ~= NO_VAL16 end

-- "gres:gpu:A5000:2" or "gres/gpu:a5000=2" or "gpu:A5000:2" -> type, count
local function gpu_request(spec)
  if spec == nil then return nil, 0 end
  for item in string.gmatch(spec, "[^,]+") do
    local t, n = string.match(item, "gpu[:/]([%a%d_]+)[:=](%d+)$")
    if t then return string.lower(t), tonumber(n) end
    n = string.match(item, "gpu[:=](%d+)$")
    if n then return nil, tonumber(n) end
  end
  return nil, 0
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  local gtype, gpus = gpu_request(job_desc.tres_per_node)
  if gpus == 0 then return slurm.SUCCESS end
  local nodes = set(job_desc.min_nodes) and job_desc.min_nodes or 1
  local cpt = set(job_desc.cpus_per_task) and job_desc.cpus_per_task or 1
  local tpn = 1
  if set(job_desc.ntasks_per_node) then
    tpn = job_desc.ntasks_per_node
  elseif set(job_desc.num_tasks) then
    tpn = math.ceil(job_desc.num_tasks / nodes)
  end
  local cpus = cpt * tpn
  if set(job_desc.min_cpus) and job_desc.min_cpus / nodes > cpus then cpus = job_desc.min_cpus / nodes end
  local need = MIN_CPUS[gtype or ""] or 1
  if cpus < need * gpus then
    slurm.log_user(string.format("Savio rule: %d CPUs per node for %d %s GPUs; at least %d per GPU is required",
      cpus, gpus, gtype or "", need))
    return slurm.ERROR
  end
  local qos = job_desc.qos
  local want = TYPE_QOS[gtype or ""]
  if qos == nil then
    if job_desc.partition == "savio3_gpu" and gtype ~= "gtx2080ti" then
      slurm.log_user("Savio rule: on savio3_gpu a " .. (gtype or "GPU") .. " job needs -q " .. (want or "savio_lowprio"))
      return slurm.ERROR
    end
  elseif TYPE_QOS_NAMES[qos] and qos ~= want then
    slurm.log_user("Savio rule: QoS " .. qos .. " is not for " .. (gtype or "untyped") .. " GPUs; use -q " .. (want or "savio_lowprio"))
    return slurm.ERROR
  end
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end
