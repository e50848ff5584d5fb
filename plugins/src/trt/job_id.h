/* The id of the running job, the same on every rank of one job and different between jobs, that keys the
 * rendezvous files: $PT_TRTLLM_JOB_ID, else the launcher's own job id (PMIx namespace, Open MPI's mpirun
 * contact URI, Slurm job and step ids). MPICH's hydra exports none: set PT_TRTLLM_JOB_ID there. */
#ifndef PT_TRT_JOB_ID_H
#define PT_TRT_JOB_ID_H

#include <string>

namespace pt_trt {

/* "<variable>=<value>" of the first id found; throws std::runtime_error (one line) when there is none. */
std::string job_id();

}  // namespace pt_trt

#endif  // PT_TRT_JOB_ID_H
